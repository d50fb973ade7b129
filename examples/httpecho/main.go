// Command httpecho is an app of a running nexus, as an ordinary user would
// write one: it imports only package client (and the standard library),
// attaches to the nexus's control socket, and serves HTTP and a UDP echo
// on the nexus's interface through its own user-space stack.
//
//	skylane nexus --dev eth0 --driver afxdp --socket /run/skylane.sock   # root
//	httpecho --nexus /run/skylane.sock --http :8080 --udp :8081         # any user the policy allows
//	curl http://198.18.0.1:8080/hello
//
// It answers every HTTP request with the method and path it asked for, and
// sends every UDP datagram back to where it came from. When the nexus goes
// away it exits non-zero, naming the nexus; with -reconnect it waits for a
// nexus to serve the socket again and serves on.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/skylane/skylane/client"
)

func main() {
	sock := flag.String("nexus", "/run/skylane.sock", "the nexus's control socket")
	httpAddr := flag.String("http", ":8080", "HTTP listen address, [IP]:PORT (empty: no HTTP)")
	udpAddr := flag.String("udp", ":8081", "UDP echo address, [IP]:PORT (empty: no echo)")
	reconnect := flag.Bool("reconnect", false, "when the nexus goes away, wait for one to serve the socket again")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *sock, *httpAddr, *udpAddr, *reconnect); err != nil {
		log.Printf("httpecho: %v", err)
		os.Exit(1)
	}
}

// run serves until ctx is done (nil) or the nexus goes away (an error),
// unless reconnect: then the stack attaches again and serves on.
func run(ctx context.Context, sock, httpAddr, udpAddr string, reconnect bool) error {
	co := client.ConnectOptions{Reattach: reconnect}
	if reconnect {
		co.Notify = func(err error) {
			if err != nil {
				log.Printf("httpecho: %v; waiting for a nexus at %s", err, sock)
			} else {
				log.Printf("httpecho: serving again on the nexus at %s", sock)
			}
		}
	}
	nx, err := client.ConnectWith(sock, co)
	if err != nil {
		return err
	}
	st, err := client.New(nx, client.Options{Name: "httpecho"})
	if err != nil {
		return fmt.Errorf("attach to the nexus at %s: %w", sock, err)
	}
	defer st.Close()
	errs := make(chan error, 2)
	if httpAddr != "" {
		ln, err := st.Listen("tcp", httpAddr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(hello), ReadHeaderTimeout: 10 * time.Second}
		defer srv.Close()
		go func() { errs <- srv.Serve(ln) }()
		log.Printf("httpecho: HTTP on %v", ln.Addr())
	}
	if udpAddr != "" {
		pc, err := st.ListenPacket("udp", udpAddr)
		if err != nil {
			return err
		}
		defer pc.Close()
		go func() { errs <- echo(pc) }()
		log.Printf("httpecho: UDP echo on %v", pc.LocalAddr())
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		if errors.Is(err, client.ErrNexusGone) {
			return fmt.Errorf("the nexus at %s is gone: %w", sock, err)
		}
		return err
	}
}

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "hello from httpecho: %s %s\n", r.Method, r.URL.Path)
}

// echo sends every datagram back until reading fails. A reply that cannot
// go is a lost datagram, as UDP allows.
func echo(pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		pc.WriteTo(buf[:n], from)
	}
}
