//go:build !unix

package server

import "os"

type fileIDs struct{}

func idsOf(os.FileInfo) fileIDs { return fileIDs{} }
