// Package control serves handoffd's control API: HTTP/JSON on a UNIX
// socket, every request checked against its peer's credentials
// (SO_PEERCRED), and the join of a process started outside handoffd
// (package joinproto). It turns requests into calls of package lifecycle
// and answers with the types of package api, whose Client speaks to it.
package control
