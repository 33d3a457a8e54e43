package main

import "github.com/hostd/broker/internal/fetch"

func sdkInfo() string {
	if fetch.SMSupported() {
		return "secrets manager: sdk-go (default) and native (pure Go)"
	}
	return "secrets manager: native (pure Go; sdk-go is not in this build)"
}
