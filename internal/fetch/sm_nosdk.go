//go:build !(cgo && (linux || darwin) && (amd64 || arm64))

package fetch

// This build has no Secrets Manager SDK (it needs cgo on linux or darwin,
// amd64 or arm64). Secrets Manager tenants are served by the pure-Go client
// (sm_native.go), which SMClientDefault picks here; asking for the SDK
// (SMConfig.Client "sdk") makes NewSM fail with a message that says how to
// get a build with it.
var smNewSDKClient func(apiURL, identityURL string) (smClient, error)
