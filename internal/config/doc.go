// Package config reads handoffd's configuration file: parsing (unknown
// keys are errors), defaults, validation that lists every problem on one
// line, checks against the host (dirs, programs, users), and the diff of
// a running config against a new one for reloads.
package config
