package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

// world is a nexus (198.18.0.1) whose control socket the test serves and
// stops, as `skylane nexus` would, on a memif wire to a host (198.18.0.2)
// with a stack in this process: the example's client.
type world struct {
	na   *nexus.Nexus
	sock string
	peer *client.Stack
}

func newWorld(t *testing.T) *world {
	t.Helper()
	p := nexustest.NewPair(t, "httpecho")
	w := &world{na: p.Nexus, peer: p.Peer, sock: filepath.Join(t.TempDir(), "nexus.sock")}
	return w
}

// serve serves the control socket until the returned stop.
func (w *world) serve(t *testing.T) (stop func()) {
	t.Helper()
	ln, err := server.Listen(w.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- server.Serve(ctx, w.na, ln) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

// check gets the example's page and its UDP echo from the peer, retrying
// (bounded) until the example serves.
func (w *world) check(t *testing.T) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: w.peer.DialContext, DisableKeepAlives: true}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := func() error {
			resp, err := hc.Get("http://198.18.0.1:8080/hello")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if string(b) != "hello from httpecho: GET /hello\n" {
				return fmt.Errorf("page %q", b)
			}
			pc, err := w.peer.ListenPacket("udp4", ":0")
			if err != nil {
				return err
			}
			defer pc.Close()
			pc.SetDeadline(time.Now().Add(time.Second))
			to := &net.UDPAddr{IP: net.IPv4(198, 18, 0, 1), Port: 8081}
			if _, err := pc.WriteTo([]byte("echo me"), to); err != nil {
				return err
			}
			buf := make([]byte, 64)
			n, from, err := pc.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "echo me" || from.String() != to.String() {
				return fmt.Errorf("UDP echo: %q from %v, %v", buf[:n], from, err)
			}
			return nil
		}()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the example does not serve: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHTTPEcho runs the example against a nexus in this process: a host on
// the nexus's wire gets its HTTP page and its UDP echo. When the nexus
// stops serving apps, run returns an error naming it that wraps
// client.ErrNexusGone; with reconnect it serves again once the nexus
// does. (The example's binary links only the app side: client's TestDeps.)
func TestHTTPEcho(t *testing.T) {
	for _, reconnect := range []bool{false, true} {
		t.Run(fmt.Sprintf("reconnect=%v", reconnect), func(t *testing.T) {
			w := newWorld(t)
			stop := w.serve(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ran := make(chan error, 1)
			go func() { ran <- run(ctx, w.sock, ":8080", ":8081", reconnect) }()
			w.check(t)
			stop()
			if reconnect {
				w.serve(t)
				w.check(t)
				cancel()
			}
			select {
			case err := <-ran:
				if reconnect && err != nil {
					t.Errorf("run: %v", err)
				}
				if !reconnect && (!errors.Is(err, client.ErrNexusGone) || !strings.Contains(err.Error(), w.sock)) {
					t.Errorf("run: %v, want an error naming %s that wraps client.ErrNexusGone", err, w.sock)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("run still serving 10 s after the nexus went or the context ended")
			}
		})
	}
}
