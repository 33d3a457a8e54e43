//go:build !linux

package state

import (
	"errors"
	"os"
)

var errNoUnnamed = errors.New("unnamed temporary files are not supported here")

func openUnnamed(dir string, perm os.FileMode) (*os.File, error) { return nil, errNoUnnamed }

func linkUnnamed(f *os.File, dir, prefix string) (string, error) { return "", errNoUnnamed }

func openUnnamedAt(dirfd int, name string, perm os.FileMode) (*os.File, error) {
	return nil, errNoUnnamed
}

func linkUnnamedAt(f *os.File, dirfd int, prefix string) (string, error) { return "", errNoUnnamed }
