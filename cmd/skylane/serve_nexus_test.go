package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/internal/nexustest"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
)

// TestServeNexusFlags: with --nexus the device's flags are the nexus's and
// refused; --reconnect needs --nexus; --nexus needs no --dev.
func TestServeNexusFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--nexus", "/s", "--addr", ":80", "--dev", "eth0"}, "--dev is the nexus's"},
		{[]string{"--nexus", "/s", "--addr", ":80", "--driver", "afxdp"}, "--driver is the nexus's"},
		{[]string{"--nexus", "/s", "--addr", ":80", "--metrics", "127.0.0.1:9"}, "--metrics is the nexus's"},
		{[]string{"--nexus", "/s"}, "--addr is required"},
		{[]string{"--dev", "x", "--addr", ":80", "--reconnect"}, "--reconnect is for --nexus"},
		{[]string{"--dev", "x", "--addr", ":80", "--socket", "/s"}, "not defined"}, // skylane nexus --socket now
	} {
		_, err := parseServe(c.args, new(bytes.Buffer))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error containing %q", c.args, err, c.want)
		}
	}
	cfg, err := parseServe([]string{"--nexus", "/s", "--addr", "198.18.0.1:80", "--reconnect", "--tls"}, new(bytes.Buffer))
	if err != nil || cfg.nexus != "/s" || !cfg.reconnect || !cfg.tls || cfg.driver != "" {
		t.Errorf("--nexus flags: %+v, %v", cfg, err)
	}
}

// nexusHost is a nexus (198.18.0.1) on one end of a memif wire whose
// control socket the test serves and stops at will, and a host on the
// other end (198.18.0.2) with a stack in this process, the HTTP client.
type nexusHost struct {
	n    *nexus.Nexus
	path string
	peer *client.Stack
	stop func() // stops serving the control socket: every app session ends
}

func newNexusHost(t *testing.T) *nexusHost {
	t.Helper()
	w := nexustest.NewPair(t, "srvnx")
	h := &nexusHost{n: w.Nexus, peer: w.Peer, path: filepath.Join(t.TempDir(), "nexus.sock")}
	h.serve(t)
	return h
}

// serve serves the control socket (again); h.stop stops it.
func (h *nexusHost) serve(t *testing.T) {
	t.Helper()
	ln, err := server.Listen(h.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.Serve(ctx, h.n, ln) }()
	stopped := false
	h.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("control socket: %v", err)
			}
		}
	}
	t.Cleanup(h.stop)
}

// get fetches url from the peer host's stack.
func (h *nexusHost) get(url string) (string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: h.peer.DialContext, DisableKeepAlives: true}}
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestServeOnNexus: serve --nexus attaches to a running nexus as an app
// and serves its page to a host on the wire; another app of the nexus is
// refused serve's port. When the nexus stops serving its apps, serve
// returns an error naming the nexus that wraps client.ErrNexusGone; with
// --reconnect it waits, and serves again once the nexus serves again.
func TestServeOnNexus(t *testing.T) {
	for _, reconnect := range []bool{false, true} {
		t.Run(fmt.Sprintf("reconnect=%v", reconnect), func(t *testing.T) {
			h := newNexusHost(t)
			args := []string{"--nexus", h.path, "--addr", ":8080"}
			if reconnect {
				args = append(args, "--reconnect")
			}
			srv := startServe(t, nil, args)
			page, err := h.get("http://198.18.0.1:8080/")
			if err != nil || !strings.Contains(page, "hello from skylane") || !strings.Contains(page, h.path) {
				t.Fatalf("GET: %q, %v\nserve said: %s", page, err, srv.out.String())
			}
			checkSocket(t, h.path, "198.18.0.1:8080")

			h.stop()
			if !reconnect {
				select {
				case err := <-srv.done:
					srv.done <- err
					if !errors.Is(err, client.ErrNexusGone) || !strings.Contains(err.Error(), "the nexus at "+h.path) {
						t.Fatalf("serve: %v, want an error naming the nexus that wraps client.ErrNexusGone", err)
					}
					t.Logf("serve: %v", err)
				case <-time.After(5 * time.Second):
					t.Fatal("serve still running 5 s after its nexus went")
				}
				return
			}
			select {
			case <-srv.out.wait("waiting for a nexus to serve"):
			case <-time.After(5 * time.Second):
				t.Fatalf("serve --reconnect did not say it lost its nexus:\n%s", srv.out.String())
			}
			h.serve(t)
			select {
			case <-srv.out.wait("attached again"):
			case <-time.After(30 * time.Second):
				t.Fatalf("serve --reconnect did not attach again in 30 s:\n%s", srv.out.String())
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				page, err = h.get("http://198.18.0.1:8080/")
				if err == nil && strings.Contains(page, "hello from skylane") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no page 30 s after the nexus came back: %v\nserve said: %s", err, srv.out.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
			select {
			case err := <-srv.done:
				srv.done <- err
				t.Fatalf("serve --reconnect returned: %v", err)
			default:
			}
			if err := srv.stop(); err != nil {
				t.Fatalf("serve: %v", err)
			}
		})
	}
}
