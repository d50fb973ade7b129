package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/client"
)

// serveOnNexus serves as an app of the nexus at cfg.nexus, with this
// process's credentials, until ctx is done (nil) or the nexus goes away:
// then an error naming it that wraps client.ErrNexusGone, unless
// cfg.reconnect, when the stack waits for a nexus to serve the socket
// again and its listener goes on there.
func serveOnNexus(ctx context.Context, cfg serveConfig, out, log io.Writer) (err error) {
	co := client.ConnectOptions{Reattach: cfg.reconnect}
	if cfg.reconnect {
		co.Notify = func(err error) {
			if err != nil {
				fmt.Fprintf(log, "skylane serve: %v; waiting for a nexus to serve %s again (--reconnect)\n", err, cfg.nexus)
			} else {
				fmt.Fprintf(log, "skylane serve: attached again to the nexus at %s; serving\n", cfg.nexus)
			}
		}
	}
	nx, err := client.ConnectWith(cfg.nexus, co)
	if err != nil {
		return fmt.Errorf("serve: --nexus: %w", err)
	}
	st, err := client.New(nx, client.Options{Name: "serve", BusyPoll: cfg.busyPoll})
	if err != nil {
		return fmt.Errorf("serve: attach to the nexus at %s: %w", cfg.nexus, err)
	}
	defer func() {
		if cerr := st.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("serve: close: %w", cerr))
		}
	}()
	addrs := st.Addrs()
	if cfg.host.IsValid() && !slices.Contains(addrs, cfg.host) {
		return fmt.Errorf("serve: %v is not an address of the nexus at %s (it has %v)", cfg.host, cfg.nexus, addrs)
	}
	where := "the nexus at " + cfg.nexus
	// When the nexus goes, the error says so and names it (the control
	// session's error, which wraps client.ErrNexusGone).
	return serveHTTP(ctx, cfg, httpOn{
		st: st, addrs: addrs, what: where, where: where,
		bye: func(requests uint64) {
			fmt.Fprintf(log, "skylane serve: stopping after %d requests\n", requests)
		},
	}, out)
}

// httpOn is what serveHTTP serves on and reports.
type httpOn struct {
	st          *client.Stack
	addrs       []netip.Addr
	what, where string                // the stack's place, for the page and for the start line
	bye         func(requests uint64) // the last words on a clean stop
}

// serveHTTP serves the hello page on h.st until ctx is done
// (nil, after a graceful shutdown) or the server fails (its error).
func serveHTTP(ctx context.Context, cfg serveConfig, h httpOn, out io.Writer) error {
	var requests atomic.Uint64
	mux := http.NewServeMux()
	// Only the hello page: the nexus's counters are not served here, on
	// the user-space port, which is unreachable exactly when the service
	// is down; they come from the nexus (skylane stats, or --metrics on a
	// kernel address).
	mux.HandleFunc("/{$}", func(rw http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		fmt.Fprintf(rw, "hello from skylane: a user-space TCP/IP stack on %s\nyou are %s\n", h.what, r.RemoteAddr)
	})
	listen := netip.AddrPortFrom(cfg.host, cfg.port).String()
	if !cfg.host.IsValid() {
		listen = fmt.Sprintf(":%d", cfg.port)
	}
	ln, err := h.st.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("serve: listen on %s: %w", cfg.addr, err)
	}
	scheme := "http"
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if cfg.tls {
		scheme = "https"
		cert, fp, err := serveCert(cfg, h.addrs)
		if err != nil {
			ln.Close()
			return err
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		ln = tls.NewListener(ln, srv.TLSConfig)
		if fp != "" {
			fmt.Fprintf(out, "self-signed certificate, SHA-256 %s\n", fp)
		}
	}
	for _, a := range h.addrs {
		if !cfg.host.IsValid() || a == cfg.host {
			fmt.Fprintf(out, "listening on %s://%s/\n", scheme, netip.AddrPortFrom(a, cfg.port))
		}
	}
	fmt.Fprintf(out, "user-space TCP/IP stack on %s; SIGINT or SIGTERM stops it\n", h.where)

	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close() // requests still running past the timeout are cut
	}
	<-done
	h.bye(requests.Load())
	return nil
}
