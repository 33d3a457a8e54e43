package state

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/joho/godotenv"
)

// MaxEnvFileSize bounds the provider env file.
const MaxEnvFileSize = 1 << 20 // 1 MiB

// LoadEnvFile reads the provider env file: it must pass the private-file
// check (see CheckPrivateFile), be at most MaxEnvFileSize bytes and parse as
// dotenv with godotenv. Parse errors never quote the file's content (it holds
// credentials): they give a line number when it can be worked out exactly,
// and a generic description.
//
// godotenv's syntax applies: in unquoted and double-quoted values, $NAME and
// ${NAME} are replaced by earlier keys of the same file, and double-quoted
// values interpret backslash escapes; single-quoted values are taken
// literally. Quote a password that contains '$' or '\' in single quotes.
func LoadEnvFile(path string) (map[string]string, error) {
	f, err := openPrivate(labelEnvFile, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := readAllBounded(f, MaxEnvFileSize)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", labelEnvFile, path, err)
	}
	env, err := parseEnv(data)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", labelEnvFile, path, err)
	}
	return env, nil
}

// Generic messages for godotenv's errors.
const (
	msgBadName      = "invalid character in a variable name (want NAME=value)"
	msgUnterminated = "unterminated quoted value"
	msgSyntax       = "malformed dotenv syntax"
)

// parseEnv parses dotenv data with godotenv and replaces its errors, which
// quote the offending text, with generic ones.
func parseEnv(data []byte) (map[string]string, error) {
	env, err := godotenv.UnmarshalBytes(data)
	if err == nil {
		return env, nil
	}
	// godotenv parses data with \r\n turned into \n; so do we, to find
	// positions. The line count is the same.
	norm := bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
	msg := err.Error()
	generic := msgSyntax
	line := 0
	switch {
	case strings.HasPrefix(msg, "unexpected character "):
		generic = msgBadName
		line = badNameLine(norm, msg)
	case strings.HasPrefix(msg, "unterminated quoted value "):
		generic = msgUnterminated
		line = unterminatedLine(norm, strings.TrimPrefix(msg, "unterminated quoted value "))
	}
	if line > 0 {
		return nil, fmt.Errorf("line %d: %s", line, generic)
	}
	return nil, errors.New(generic)
}

// badNameLine finds the line of godotenv's
// `unexpected character "c" in variable name near "REST"` error: REST is
// the rest of the input from the start of the offending statement, so its
// length gives the statement's offset. It returns 0 if that does not check
// out.
func badNameLine(norm []byte, msg string) int {
	const marker = ` in variable name near `
	i := strings.Index(msg, marker)
	if i < 0 {
		return 0
	}
	rest, err := strconv.Unquote(msg[i+len(marker):])
	if err != nil || !bytes.HasSuffix(norm, []byte(rest)) {
		return 0
	}
	return lineAt(norm, len(norm)-len(rest))
}

// unterminatedLine finds the line of godotenv's
// `unterminated quoted value "TEXT` error, where TEXT runs from the opening
// quote to the end of its line. godotenv scans from the opening quote to the
// end of the input without meeting a closing quote (one not preceded by a
// backslash), so the opening quote is the last such quote character in the
// input. It returns 0 if that does not check out.
func unterminatedLine(norm []byte, text string) int {
	if text == "" || (text[0] != '"' && text[0] != '\'') {
		return 0
	}
	q := text[0]
	open := -1
	for i := len(norm) - 1; i >= 1; i-- {
		if norm[i] == q && norm[i-1] != '\\' {
			open = i
			break
		}
	}
	if open < 0 || !bytes.HasPrefix(norm[open:], []byte(text)) {
		return 0
	}
	if end := open + len(text); end != len(norm) && norm[end] != '\n' {
		return 0
	}
	return lineAt(norm, open)
}

func lineAt(data []byte, off int) int { return bytes.Count(data[:off], []byte("\n")) + 1 }
