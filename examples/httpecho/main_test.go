package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/inproc"
)

// TestHTTPEcho runs the example against a nexus in this process (its
// control socket served as `skylane nexus` would): a host on the nexus's
// wire gets its HTTP page and its UDP echo; when the nexus stops serving
// apps, run returns an error naming it that wraps client.ErrNexusGone.
// (The example's binary links only the app side: client's TestDeps.)
func TestHTTPEcho(t *testing.T) {
	la, lb, err := memif.NewPair(memif.Options{Name: "httpecho"})
	if err != nil {
		t.Fatal(err)
	}
	na, err := nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	nb, err := nexus.New(nexus.Options{Link: lb, Addrs: []netip.Addr{netip.MustParseAddr("198.18.0.2")}})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	peer, err := client.New(inproc.Nexus(nb), client.Options{Name: "peer"})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()

	sock := filepath.Join(t.TempDir(), "nexus.sock")
	ln, err := server.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, stopNexus := context.WithCancel(context.Background())
	defer stopNexus()
	served := make(chan error, 1)
	go func() { served <- server.Serve(sctx, na, ln) }()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- run(ctx, sock, ":8080", ":8081") }()

	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: peer.DialContext, DisableKeepAlives: true}}
	var page string
	deadline := time.Now().Add(20 * time.Second)
	for { // until the example listens
		resp, err := hc.Get("http://198.18.0.1:8080/hello")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			page = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if page != "hello from httpecho: GET /hello\n" {
		t.Errorf("page %q", page)
	}

	pc, err := peer.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(10 * time.Second))
	to := &net.UDPAddr{IP: net.IPv4(198, 18, 0, 1), Port: 8081}
	if _, err := pc.WriteTo([]byte("echo me"), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "echo me" || from.String() != to.String() {
		t.Fatalf("UDP echo: %q from %v, %v", buf[:n], from, err)
	}

	stopNexus()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	select {
	case err := <-ran:
		if !errors.Is(err, client.ErrNexusGone) || !strings.Contains(err.Error(), sock) {
			t.Errorf("run: %v, want an error naming %s that wraps client.ErrNexusGone", err, sock)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run still serving 5 s after the nexus went")
	}
}
