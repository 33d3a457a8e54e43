//go:build !(cgo && (linux || darwin) && (amd64 || arm64))

package fetch

// This build has no Secrets Manager SDK (it needs cgo on linux or darwin,
// amd64 or arm64). NewSM still works, so that a broker serving only bw CLI
// tenants starts; every Secrets Manager call gives a KindConfig error that
// says how to get a build with the SDK (see errNoSDK).
var smNewSDKClient func(apiURL, identityURL string) (smClient, error)
