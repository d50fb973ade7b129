package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
)

// TestStats: skylane stats prints a running nexus's sessions, as a table
// and as JSON, once or every --watch until stopped.
func TestStats(t *testing.T) {
	la, lb, err := memif.NewPair(memif.Options{Name: "stats"})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	nx, err := nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer nx.Close()
	sock, err := control.ListenSocket(filepath.Join(t.TempDir(), "nexus.sock"), -1)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- control.NewServer(nx, control.ServerOptions{}).Serve(ctx, sock.UnixListener) }()
	defer func() { cancel(); <-served }()

	rn, err := client.Connect(sock.Path())
	if err != nil {
		t.Fatal(err)
	}
	st, err := client.New(rn, client.Options{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ln, err := st.Listen("tcp", "198.18.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	var out bytes.Buffer
	if err := printStats(context.Background(), sock.Path(), false, 0, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), " web ") || !strings.Contains(out.String(), "1 flows") {
		t.Errorf("table:\n%s", out.String())
	}
	out.Reset()
	// --watch: samples until the context ends.
	wctx, wcancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer wcancel()
	if err := printStats(wctx, sock.Path(), true, time.Second, &out); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(&out)
	n := 0
	for dec.More() {
		var s control.Stats
		if err := dec.Decode(&s); err != nil {
			t.Fatal(err)
		}
		n++
		var web *control.SessionStats
		for i := range s.Sessions {
			if s.Sessions[i].App == "web" {
				web = &s.Sessions[i]
			}
		}
		if web == nil || web.Flows != 1 || web.Channel == "" || web.PoolMax == 0 {
			t.Errorf("sample %d: web's session %+v", n, web)
		}
	}
	if n < 2 {
		t.Errorf("%d samples in 2.5 s with --watch 1s, want at least 2", n)
	}
}
