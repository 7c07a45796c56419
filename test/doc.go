// Package test holds the end-to-end tests of handoffd: they build the real
// binaries, run handoffd as root on the real kernel with the Gin demo, put
// real HTTP load on it and drive it with handoffctl, asserting what a user
// would see. Run them with `make test` (as root).
package test
