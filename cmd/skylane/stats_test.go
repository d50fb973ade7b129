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
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
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

	// Two frames from the wire: one of no flow, one cut short. The table
	// names each drop with its place and reason, parse drops included.
	none := (&packettest.Frame{Src: netip.MustParseAddrPort("198.18.0.2:6000"), Dst: netip.MustParseAddrPort("198.18.0.1:9999"),
		Proto: packet.ProtoUDP, Payload: []byte("no flow")}).Bytes()
	if n, err := lb.Write([][]byte{none, none[:14+10]}); n != 2 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s, err := control.FetchStats(sock.Path())
		if err != nil {
			t.Fatal(err)
		}
		if s.Totals.Packets >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nexus read %d of 2 frames in 10 s", s.Totals.Packets)
		}
	}
	var out bytes.Buffer
	if err := printStats(context.Background(), sock.Path(), false, 0, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"link: rx 2 frames, 0 lost", " rx/switch/no_flow=1", " rx/switch/parse_" + packet.ReasonTruncatedIPv4.String() + "=1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
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

// TestWriteNextHops: the next-hop lines name each route's next hop
// (on-link, a gateway, asking, unreachable) and MAC, and say how many
// routes were left out.
func TestWriteNextHops(t *testing.T) {
	gw := netip.MustParseAddr("fe80::fe")
	l := &flowswitch.SnapshotL2{
		RoutesTotal: 5,
		Routes: []neigh.RouteInfo{
			{Remote: netip.MustParseAddr("198.18.0.11"), Via: netip.MustParseAddr("198.18.0.11"), Known: true, MAC: "02:00:00:00:00:11", State: "reachable"},
			{Remote: netip.MustParseAddr("2001:db8:2::7"), Via: gw, Known: true, MAC: "02:00:00:00:00:fe", State: "stale"},
			{Remote: netip.MustParseAddr("198.18.0.99"), Held: 3},
			{Remote: netip.MustParseAddr("203.0.113.1"), Known: true},
		},
		Neighbors: []neigh.NeighborInfo{{Addr: gw, MAC: "02:00:00:00:00:fe", State: "stale", Routes: 1}},
	}
	l.Resolver.MACChanges = 2
	var b bytes.Buffer
	writeNextHops(&b, l)
	out := b.String()
	for _, want := range []string{"5 routes", "2 MAC changes", "fe80::fe   02:00:00:00:00:fe  stale", "198.18.0.11    on-link",
		"2001:db8:2::7  fe80::fe", "198.18.0.99    asking", "203.0.113.1    unreachable", "(1 more routes"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
}
