package main

import "github.com/hostd/broker/internal/fetch"

func sdkInfo() string {
	if fetch.SMSupported() {
		return "secrets manager: sdk-go"
	}
	return "secrets manager: not in this build"
}
