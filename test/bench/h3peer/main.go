// Command h3peer is the HTTP/3 server the benchmark runs for the QUIC
// strategies that are not handoffd: quic-go's http3.Server with the
// answer of the demo's GET / (JSON with its generation and pid), on a UDP
// socket of its own, stopping with http3.Server.Shutdown (GOAWAY).
//
//   - plain: a socket without SO_REUSEPORT, so the next generation can
//     bind only once this one has closed it (a naive restart);
//   - reuseport: SO_REUSEPORT, so the next generation's socket joins the
//     group beside this one, and the kernel's 4-tuple hash spreads the
//     packets of every connection over both until this one leaves.
//
// It prints "ready GEN PID" on stdout once it serves. Its generation comes
// from BENCH_GEN.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/quic-go/quic-go/http3"
	"golang.org/x/sys/unix"
)

// shutdownLimit bounds a Shutdown.
const shutdownLimit = 30 * time.Second

func main() {
	strategy := flag.String("strategy", "plain", "plain or reuseport")
	addr := flag.String("addr", "127.0.0.1:8443", "UDP listen address")
	flag.Parse()
	gen, _ := strconv.Atoi(os.Getenv("BENCH_GEN"))
	if gen == 0 {
		gen = 1
	}
	log.SetPrefix(fmt.Sprintf("h3peer gen %d pid %d: ", gen, os.Getpid()))
	if err := run(*strategy, *addr, gen); err != nil {
		log.Fatal(err)
	}
}

func run(strategy, addr string, gen int) error {
	lc := net.ListenConfig{}
	switch strategy {
	case "plain":
	case "reuseport":
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
			if err != nil {
				return err
			}
			return serr
		}
	default:
		return fmt.Errorf("unknown strategy %q", strategy)
	}
	// A naive restart retries the bind until the old generation let go.
	var pc net.PacketConn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		pc, err = lc.ListenPacket(context.Background(), "udp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	pid := os.Getpid()
	srv := &http3.Server{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"service": "bench", "generation": gen, "pid": pid})
		})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()
	stop, unwatch := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer unwatch()
	fmt.Printf("ready %d %d\n", gen, pid)
	select {
	case <-stop.Done():
	case err := <-served:
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownLimit)
	defer cancel()
	err = srv.Shutdown(ctx)
	pc.Close()
	return err
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
