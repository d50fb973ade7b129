package control_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/asuser"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/policy"
	"github.com/skylane/skylane/packet"
)

// socketGroup is the group the tests' control socket is given: the apps'
// threads are members, as an operator's --socket-group members would be.
const socketGroup = 4242

const testPolicy = `
[[allow]]        # rule 1: a web app on one address, no dialling
uid = 65534
tcp = ["8080"]
udp = ["5353"]
addrs = ["198.18.0.1"]
max_flows = 3
max_pool = "1MiB"

[[allow]]        # rule 2: a client that dials within 198.18.0.0/15
uid = 65533
tcp = ["9000-9099"]
dial = true
dial_to = ["198.18.0.0/15"]

[[allow]]        # rule 3: an observer
uid = 65531
observe = true
`

// policyServer serves a nexus on a memif wire with the test policy, on a
// socket apps of other uids can reach (mode 0660, group socketGroup, in a
// directory they can search).
type policyServer struct {
	n    *nexus.Nexus
	srv  *server.Server
	path string
	log  *syncBuffer
}

func servePolicy(t *testing.T, src string) *policyServer {
	t.Helper()
	return servePolicyWith(t, src, nexus.Options{})
}

// servePolicyWith is servePolicy on a nexus with o (its Link and Addrs
// set here).
func servePolicyWith(t *testing.T, src string, o nexus.Options) *policyServer {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("SKYLANE_REQUIRE_PRIV") == "1" {
			t.Fatal("needs root: apps of other uids")
		}
		t.Skip("needs root: apps of other uids")
	}
	pol, err := policy.Parse("test.toml", []byte(src), policy.System())
	if err != nil {
		t.Fatal(err)
	}
	la, lb, err := memif.NewPair(memif.Options{Name: "pol"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	o.Link, o.Addrs = la, []netip.Addr{addr4}
	n, err := nexus.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	dir, err := os.MkdirTemp("", "policy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ps := &policyServer{n: n, path: filepath.Join(dir, "nexus.sock"), log: &syncBuffer{}}
	sock, err := server.ListenSocket(ps.path, socketGroup)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	ps.srv = server.NewServer(n, server.ServerOptions{Policy: pol, Log: slog.New(slog.NewTextHandler(ps.log, nil)),
		Ephemeral: [2]uint16{32768, 60999}})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ps.srv.Serve(ctx, sock.UnixListener) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ps
}

// open opens a session as uid (gid = uid, in socketGroup).
func (ps *policyServer) open(t *testing.T, uid uint32, name string) (*control.Session, error) {
	t.Helper()
	var s *control.Session
	err := asuser.Do(uid, uid, []uint32{socketGroup}, func() (err error) {
		s, err = control.Open(ps.path, name, control.OpenOptions{})
		return err
	})
	if s != nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

func key(proto uint8, local, remote string) packet.Key {
	var r netip.AddrPort
	if remote != "" {
		r = netip.MustParseAddrPort(remote)
	}
	return packet.MakeKey(proto, netip.MustParseAddrPort(local), r)
}

// TestPolicy: every open and register is checked against the rule that
// governs the app's uid; refusals reach the app as ErrNotPermitted naming
// the rule, and are counted and logged.
func TestPolicy(t *testing.T) {
	ps := servePolicy(t, testPolicy)
	const tcp, udp = packet.ProtoTCP, packet.ProtoUDP

	// No rule for uid 65532: refused at open, saying what to add.
	if _, err := ps.open(t, 65532, "stranger"); !errors.Is(err, control.ErrNotPermitted) || !strings.Contains(err.Error(), "uid = 65532") {
		t.Errorf("open by uid 65532: %v, want ErrNotPermitted naming uid = 65532", err)
	}

	web, err := ps.open(t, 65534, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  packet.Key
		kind flow.Kind
		want string // "" allowed, else a substring of the refusal
	}{
		{"its port", key(tcp, "198.18.0.1:8080", "").Listener3(), flow.Listener3, ""},
		{"a privileged port", key(tcp, "198.18.0.1:80", "").Listener3(), flow.Listener3, "tcp ports are 8080"},
		{"another rule's port", key(tcp, "198.18.0.1:9000", "").Listener3(), flow.Listener3, "rule 2 (test.toml:10, uid 65533) would allow it"},
		{"every address", key(udp, "0.0.0.0:5353", "").Listener2(), flow.Listener2, "not every address"},
		{"an accepted connection", key(tcp, "198.18.0.1:8080", "198.18.0.2:40000"), flow.Connected, ""},
		{"a dial", key(tcp, "198.18.0.1:40001", "198.18.0.2:80"), flow.Connected, "no dial = true"},
		{"its udp port", key(udp, "198.18.0.1:5353", "").Listener3(), flow.Listener3, ""},
		{"over max_flows", key(tcp, "198.18.0.1:8080", "198.18.0.3:40000"), flow.Connected, "max_flows is 3"},
	} {
		_, err := web.Register(tc.key, tc.kind)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("web: %s: refused: %v", tc.name, err)
		case tc.want != "" && (!errors.Is(err, control.ErrNotPermitted) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("web: %s: %v, want ErrNotPermitted saying %q", tc.name, err, tc.want)
		}
	}

	dialer, err := ps.open(t, 65533, "dialer")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  packet.Key
		want string
	}{
		{"from an ephemeral port", key(tcp, "198.18.0.1:40000", "198.18.0.9:80"), ""},
		{"from a chosen port it may bind", key(tcp, "198.18.0.1:9001", "198.18.0.9:80"), ""},
		{"from a port it may not bind", key(udp, "198.18.0.1:1234", "198.18.0.9:53"), "ephemeral range"},
		{"outside dial_to", key(tcp, "198.18.0.1:40002", "203.0.113.1:80"), "dial_to is [198.18.0.0/15]"},
		{"another app's port", key(tcp, "198.18.0.1:8080", "198.18.0.9:80"), "ephemeral range"},
	} {
		_, err := dialer.Register(tc.key, flow.Connected)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("dialer: %s: refused: %v", tc.name, err)
		case tc.want != "" && (!errors.Is(err, control.ErrNotPermitted) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("dialer: %s: %v, want ErrNotPermitted saying %q", tc.name, err, tc.want)
		}
	}
	// Teardown reaches only the session's own flows.
	if err := dialer.Teardown(key(tcp, "198.18.0.1:8080", "").Listener3()); !errors.Is(err, nexus.ErrNoFlow) {
		t.Errorf("dialer tears down web's listener: %v, want ErrNoFlow", err)
	}

	// Stats: only observers.
	if _, err := statsAs(ps, 65534); !errors.Is(err, control.ErrNotPermitted) {
		t.Errorf("stats by uid 65534: %v, want ErrNotPermitted", err)
	}
	st, err := statsAs(ps, 65531)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint32]server.SessionStats{}
	for _, s := range st.Sessions {
		got[s.UID] = s
	}
	if w := got[65534]; w.App != "web" || w.Flows != 3 || w.Refused != 5 || !strings.HasPrefix(w.Rule, "rule 1 ") {
		t.Errorf("stats of web: %+v", w)
	}
	if d := got[65533]; d.App != "dialer" || d.Flows != 2 || d.PID != int32(os.Getpid()) {
		t.Errorf("stats of dialer: %+v", d)
	}
	// 1 open + 5 web + 3 dialer + 1 stats refused.
	if st.Refused != 10 || ps.srv.Refused() != 10 {
		t.Errorf("refused %d (server %d), want 10", st.Refused, ps.srv.Refused())
	}
	if n := strings.Count(ps.log.String(), "msg=refused"); n != 10 {
		t.Errorf("%d refusals logged, want 10:\n%s", n, ps.log)
	}

	// Reload without rule 1: web keeps its flows, and is refused from now on.
	p2, err := policy.Parse("test2.toml", []byte(testPolicy[strings.Index(testPolicy, "[[allow]]        # rule 2"):]), policy.System())
	if err != nil {
		t.Fatal(err)
	}
	if n := ps.srv.SetPolicy(p2); n < 2 {
		t.Errorf("SetPolicy matched %d sessions, want at least 2", n)
	}
	if _, err := web.Register(key(udp, "198.18.0.1:5353", "198.18.0.2:5353"), flow.Connected); !errors.Is(err, control.ErrNotPermitted) {
		t.Errorf("web after reload: %v, want ErrNotPermitted", err)
	}
	if st, _ := ps.n.Stats(); st.Flows != 5 {
		t.Errorf("%d flows after reload, want 5 (kept)", st.Flows)
	}
	if _, err := dialer.Register(key(tcp, "198.18.0.1:40003", "198.18.0.9:80"), flow.Connected); err != nil {
		t.Errorf("dialer after reload: %v", err)
	}

	// Shutdown tells every app why, in a last message with ErrNexusGone's
	// code, then closes its session.
	raw, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: ps.path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := statsAs(ps, 65531); err != nil { // the raw session is served from here on
		t.Fatal(err)
	}
	ps.srv.Shutdown("nexus on test stopping: interface deleted")
	buf := make([]byte, control.MaxMessage)
	k, err := raw.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var bye control.Reply
	if err := json.Unmarshal(buf[:k], &bye); err != nil {
		t.Fatal(err)
	}
	if rerr := (&control.RemoteError{Msg: bye.Error, Code: bye.Code}); bye.OK || !errors.Is(rerr, control.ErrNexusGone) || !strings.Contains(bye.Error, "interface deleted") {
		t.Errorf("last message %+v, want ErrNexusGone's code and the reason", bye)
	}
	if _, err := raw.Read(buf); err == nil {
		t.Error("session still open after the goodbye")
	}
	// An app's session learns why, whether it was waiting or not.
	select {
	case <-dialer.Gone():
	case <-time.After(10 * time.Second):
		t.Fatal("the dialer's session did not end after Shutdown")
	}
	if err := dialer.Err(); !errors.Is(err, control.ErrNexusGone) || !strings.Contains(err.Error(), "interface deleted") {
		t.Errorf("dialer's session after Shutdown: %v, want ErrNexusGone saying why", err)
	}
	if _, err := dialer.Register(key(tcp, "198.18.0.1:40004", "198.18.0.9:80"), flow.Connected); !errors.Is(err, control.ErrNexusGone) {
		t.Errorf("register after Shutdown: %v, want ErrNexusGone", err)
	}
}

// TestPolicyMaxPool: max_pool caps the app's pool; an app without one
// gets the nexus's default cap.
func TestPolicyMaxPool(t *testing.T) {
	ps := servePolicy(t, testPolicy)
	if _, err := ps.open(t, 65534, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.open(t, 65533, "dialer"); err != nil {
		t.Fatal(err)
	}
	st, err := ps.n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	const def = nexus.DefaultMaxSegments * nexus.DefaultSegmentSize
	for _, p := range st.Ports {
		want := int64(def)
		if strings.HasPrefix(p.Name, "web") {
			want = 1 << 20
		}
		if p.MaxPool != want {
			t.Errorf("port %s: pool capped at %d bytes, want %d", p.Name, p.MaxPool, want)
		}
	}
}

// TestPolicyRate: a rule's rate caps its apps' ports (with the switch's
// regulation, which the nexus daemon turns on for a policy with rates).
func TestPolicyRate(t *testing.T) {
	ps := servePolicyWith(t, "[[allow]]\nuid = 65534\nrate = \"10Mbit\"\n\n[[allow]]\nuid = 65533\n",
		nexus.Options{Switch: flowswitch.Options{Regulation: &flowswitch.RegulationOptions{}}})
	if _, err := ps.open(t, 65534, "capped"); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.open(t, 65533, "free"); err != nil {
		t.Fatal(err)
	}
	st, err := ps.srv.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Sessions {
		want := map[string]int64{"capped": 10e6, "free": 0}[s.App]
		if s.Rate != want {
			t.Errorf("%s: rate %d bit/s, want %d", s.App, s.Rate, want)
		}
	}
}

func statsAs(ps *policyServer, uid uint32) (server.Stats, error) {
	var st server.Stats
	err := asuser.Do(uid, uid, []uint32{socketGroup}, func() (err error) {
		st, err = server.FetchStats(ps.path)
		return err
	})
	return st, err
}

// syncBuffer is a log sink the server's goroutines share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
