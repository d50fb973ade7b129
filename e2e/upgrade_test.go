package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus/control"
)

// upgradeAppEnv carries an upgrade app's config (JSON); TestUpgradeApp
// runs as that app when it is set.
const upgradeAppEnv = "SKYLANE_E2E_UPGRADE_APP"

// upgradeApp is one app process of the upgrade tests.
type upgradeApp struct {
	Socket string
	Role   string // "http", "bulk" (streams bulkByte(i) to each connection), "udp" (echo)
	Listen string
}

// upgradePolicy lets the apps' uid serve their three ports.
const upgradePolicy = `
[[allow]]
uid = 65534
tcp = ["8081", "8090"]
udp = ["5301"]
addrs = ["198.18.0.1"]
`

const (
	upHTTP = "198.18.0.1:8081"
	upBulk = "198.18.0.1:8090"
	upUDP  = "198.18.0.1:5301"
)

// bulkByte is byte i of the bulk stream: a pattern that a lost, repeated
// or reordered segment breaks (251 is prime, coprime with every segment
// size).
func bulkByte(i uint64) byte { return byte(i % 251) }

// TestUpgradeApp is not a test of its own: it is an app process of the
// upgrade tests, with upgradeAppEnv set. It attaches once (no re-attach:
// an upgrade must not need one) and serves until killed.
func TestUpgradeApp(t *testing.T) {
	cfg := os.Getenv(upgradeAppEnv)
	if cfg == "" {
		t.Skip("an app process of the upgrade tests; runs only as their child")
	}
	var c upgradeApp
	if err := json.Unmarshal([]byte(cfg), &c); err != nil {
		fmt.Printf("app: fatal: config: %v\n", err)
		os.Exit(2)
	}
	if err := runUpgradeApp(c); err != nil {
		fmt.Printf("app: fatal: %v\n", err)
		os.Exit(2)
	}
	os.Exit(0)
}

func runUpgradeApp(c upgradeApp) error {
	nx, err := client.Connect(c.Socket)
	if err != nil {
		return err
	}
	st, err := client.New(nx, client.Options{Name: c.Role, TimeWait: time.Second})
	if err != nil {
		return err
	}
	defer st.Close()
	switch c.Role {
	case "udp":
		pc, err := st.ListenPacket("udp4", c.Listen)
		if err != nil {
			return err
		}
		fmt.Printf("app: ready pid=%d\n", os.Getpid())
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return err
			}
			if _, err := pc.WriteTo(buf[:n], from); err != nil {
				return err
			}
		}
	case "http":
		ln, err := st.Listen("tcp4", c.Listen)
		if err != nil {
			return err
		}
		fmt.Printf("app: ready pid=%d\n", os.Getpid())
		return http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			io.WriteString(rw, "hello from the upgrade app\n")
		}))
	case "bulk":
		ln, err := st.Listen("tcp4", c.Listen)
		if err != nil {
			return err
		}
		fmt.Printf("app: ready pid=%d\n", os.Getpid())
		for {
			conn, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 64<<10)
				var off uint64
				for {
					for i := range buf {
						buf[i] = bulkByte(off + uint64(i))
					}
					if _, err := conn.Write(buf); err != nil {
						fmt.Printf("app: bulk write: %v\n", err)
						return
					}
					off += uint64(len(buf))
				}
			}()
		}
	}
	return fmt.Errorf("unknown role %q", c.Role)
}

// upgradeWorld is a nexus on a veth (AF_XDP) with the three upgrade apps
// attached and the kernel's load against them from the peer namespace.
type upgradeWorld struct {
	v    *nettest.Veth
	bin  string
	sock string
	args []string
	nx   *proc
	apps []*proc
	load *upgradeLoad
}

// upgradeRated is upgradePolicy with a transmit rate: the nexus runs its
// regulation layer (queue, pacing, advisories).
const upgradeRated = upgradePolicy + `rate = "2Gbit"
`

// newUpgradeWorld starts the nexus and the apps; peerMAC gives the nexus
// its next hop, else it follows the kernel's tables (and so does every
// nexus that takes over).
func newUpgradeWorld(t *testing.T, policy string, peerMAC bool) *upgradeWorld {
	t.Helper()
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "curl")
	w := &upgradeWorld{bin: skylaneBinary(t)}
	app := appBinary(t)
	w.v = nettest.NewVeth(t, nettest.VethOptions{})
	wireChecksums(t, w.v)
	dir := sharedDir(t)
	pol := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(pol, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	w.sock = filepath.Join(dir, "nexus.sock")
	w.args = []string{"nexus", "--driver", drivers.AFXDP, "--dev", w.v.LocalName,
		"--socket", w.sock, "--socket-group", fmt.Sprint(socketGroup), "--policy", pol}
	if peerMAC {
		w.args = append(w.args, "--peer-mac", w.v.PeerMAC.String())
	}
	w.nx = startProc(t, w.v.Local.Command, w.bin, w.args, `msg="nexus started"`)
	for _, a := range []upgradeApp{{Role: "http", Listen: upHTTP}, {Role: "bulk", Listen: upBulk}, {Role: "udp", Listen: upUDP}} {
		a.Socket = w.sock
		b, _ := json.Marshal(a)
		cmd := func(ctx context.Context, name string, args ...string) *exec.Cmd {
			c := exec.CommandContext(ctx, name, args...)
			c.Env = append(os.Environ(), upgradeAppEnv+"="+string(b))
			c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{socketGroup}}}
			return c
		}
		w.apps = append(w.apps, startProc(t, cmd, app, []string{"-test.run=^TestUpgradeApp$", "-test.v=false"}, "app: ready"))
	}
	return w
}

// upgrade starts a nexus that takes over with env added, and waits for
// it to serve and for the old one to exit 0.
func (w *upgradeWorld) upgrade(t *testing.T) {
	t.Helper()
	old := w.nx
	w.nx = startProc(t, w.v.Local.Command, w.bin, append(w.args, "--takeover"), `msg="nexus started"`)
	select {
	case <-old.exited:
		if old.err != nil {
			t.Fatalf("the old nexus exited with %v after the takeover:\n%s", old.err, old.text())
		}
	case <-time.After(opTimeout):
		t.Fatalf("the old nexus still runs %v after the takeover:\n%s", opTimeout, old.text())
	}
	if txt := w.nx.text(); !strings.Contains(txt, `msg="took over"`) || !strings.Contains(txt, " lost=0 ") {
		t.Fatalf("the new nexus did not take everything over:\n%s", txt)
	}
}

// failedTakeover runs a takeover with env that must fail with want in its
// output, the old nexus serving on.
func (w *upgradeWorld) failedTakeover(t *testing.T, env []string, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cmd := w.v.Local.Command(ctx, w.bin, append(w.args, "--takeover")...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("takeover with %v succeeded:\n%s", env, out)
	}
	if !bytes.Contains(out, []byte(want)) {
		t.Errorf("takeover with %v: %v, output lacks %q:\n%s", env, err, want, out)
	}
	select {
	case <-w.nx.exited:
		t.Fatalf("the old nexus exited after a failed takeover (%v): %v\n%s", env, w.nx.err, w.nx.text())
	default:
	}
}

// resources counts what a process holds: descriptors by kind, and
// mappings of memfds.
func resources(t *testing.T, pid int) map[string]int {
	t.Helper()
	m := map[string]int{}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err != nil {
			continue
		}
		m["fds"]++
		switch {
		case strings.HasPrefix(l, "anon_inode:bpf"), strings.HasPrefix(l, "anon_inode:[eventfd]"):
			m[l]++
		case strings.HasPrefix(l, "/memfd:"):
			m["memfd"]++
		case strings.HasPrefix(l, "socket:"):
			m["socket"]++
		}
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		if strings.Contains(l, "/memfd:") {
			m["memfd maps"]++
		}
		if strings.Contains(l, "socket:") {
			m["xsk maps"]++
		}
	}
	return m
}

// upgradeLoad is the kernel's traffic against the apps: a bulk TCP stream
// checked byte by byte, a UDP request/response stream (one 64-byte
// request per ms), curl in a loop, and a kept-alive HTTP client.
type upgradeLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup

	bulkBytes atomic.Uint64 // verified
	bulkErr   atomic.Value  // error
	udpOK     atomic.Uint64
	udpLost   atomic.Uint64
	udpMaxGap atomic.Int64 // ns between two answers
	curls     atomic.Uint64
	curlErrs  atomic.Uint64
	lastCurl  atomic.Value // string: the last failure
	keepAlive atomic.Uint64
	kaErrs    atomic.Uint64
}

func (w *upgradeWorld) startLoad(t *testing.T) *upgradeLoad {
	t.Helper()
	l := &upgradeLoad{stop: make(chan struct{})}
	var bulk net.Conn
	var udp *net.UDPConn
	if err := w.v.Peer.Do(func() (err error) {
		if bulk, err = net.DialTimeout("tcp4", upBulk, opTimeout); err != nil {
			return err
		}
		udp, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(upUDP)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Bulk: read and check every byte.
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer bulk.Close()
		buf := make([]byte, 256<<10)
		var off uint64
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			bulk.SetReadDeadline(time.Now().Add(opTimeout))
			n, err := bulk.Read(buf)
			for i, b := range buf[:n] {
				if b != bulkByte(off+uint64(i)) {
					l.bulkErr.Store(fmt.Errorf("bulk byte %d is %d, want %d", off+uint64(i), b, bulkByte(off+uint64(i))))
					return
				}
			}
			off += uint64(n)
			l.bulkBytes.Store(off)
			if err != nil {
				l.bulkErr.Store(fmt.Errorf("bulk stream after %d bytes: %w", off, err))
				return
			}
		}
	}()
	// UDP request/response, one request per ms.
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer udp.Close()
		req := make([]byte, 64)
		resp := make([]byte, 128)
		last := time.Now()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(req, seq)
			udp.Write(req)
			udp.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, err := udp.Read(resp)
				if err != nil {
					l.udpLost.Add(1)
					break
				}
				if n == 64 && binary.BigEndian.Uint64(resp) == seq {
					now := time.Now()
					if g := int64(now.Sub(last)); g > l.udpMaxGap.Load() {
						l.udpMaxGap.Store(g)
					}
					last = now
					l.udpOK.Add(1)
					break
				}
			}
		}
	}()
	// curl in a loop, each a new connection.
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			out, err := w.v.Peer.Command(ctx, "curl", "-sS", "--max-time", "10", "http://"+upHTTP+"/").CombinedOutput()
			cancel()
			l.curls.Add(1)
			if err != nil || !strings.HasPrefix(string(out), "hello from the upgrade app") {
				l.curlErrs.Add(1)
				l.lastCurl.Store(fmt.Sprintf("%v: %s", err, out))
			}
		}
	}()
	// A kept-alive HTTP connection: the same TCP connection across every
	// upgrade.
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		var dials atomic.Int32
		tr := &http.Transport{MaxIdleConnsPerHost: 1, DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			dials.Add(1)
			err = w.v.Peer.Do(func() (err error) { c, err = net.Dial(network, addr); return err })
			return c, err
		}}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: opTimeout}
		for {
			select {
			case <-l.stop:
				if d := dials.Load(); d != 1 {
					l.kaErrs.Add(uint64(d - 1))
				}
				return
			case <-time.After(5 * time.Millisecond):
			}
			resp, err := hc.Get("http://" + upHTTP + "/")
			if err != nil {
				l.kaErrs.Add(1)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			l.keepAlive.Add(1)
		}
	}()
	return l
}

// finish stops the load and checks it saw no error.
func (l *upgradeLoad) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if err, _ := l.bulkErr.Load().(error); err != nil {
		t.Errorf("bulk: %v", err)
	}
	if l.curlErrs.Load() > 0 {
		t.Errorf("curl failed %d times of %d; last: %v", l.curlErrs.Load(), l.curls.Load(), l.lastCurl.Load())
	}
	if l.kaErrs.Load() > 0 {
		t.Errorf("the kept-alive HTTP client failed or redialled %d times (%d requests)", l.kaErrs.Load(), l.keepAlive.Load())
	}
	t.Logf("load: bulk %d bytes checked; udp %d answers, %d lost, longest gap %v; curl %d; kept-alive requests %d",
		l.bulkBytes.Load(), l.udpOK.Load(), l.udpLost.Load(), time.Duration(l.udpMaxGap.Load()), l.curls.Load(), l.keepAlive.Load())
}

// progress waits until the bulk stream and the UDP and HTTP streams moved
// past where they were.
func (l *upgradeLoad) progress(t *testing.T, what string) {
	t.Helper()
	b, u, k := l.bulkBytes.Load(), l.udpOK.Load(), l.keepAlive.Load()
	deadline := time.Now().Add(opTimeout)
	for l.bulkBytes.Load() < b+1<<20 || l.udpOK.Load() < u+10 || l.keepAlive.Load() < k+2 {
		if err, _ := l.bulkErr.Load().(error); err != nil {
			t.Fatalf("%s: bulk: %v", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the load stalled: bulk %d→%d bytes, udp %d→%d answers, http %d→%d",
				what, b, l.bulkBytes.Load(), u, l.udpOK.Load(), k, l.keepAlive.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUpgrade: 20 takeovers in a row on AF_XDP under load from three app
// processes (HTTP to the kernel's curl in a loop and to a kept-alive
// client, a bulk TCP stream checked byte by byte, UDP request/response):
// every connection survives, no app re-attaches, and the last nexus
// holds what the first did (descriptors by kind, memfd mappings), with
// one XDP program attached throughout. Each nexus follows the kernel's
// routing and neighbour tables for its next hop. Then one more upgrade the way
// systemctl reload does it (SIGUSR2: the nexus starts the next itself),
// and SIGTERM leaves nothing.
func TestUpgrade(t *testing.T) {
	w := newUpgradeWorld(t, upgradePolicy, false)
	l := w.startLoad(t)
	l.progress(t, "before the upgrades")
	before := resources(t, w.nx.cmd.Process.Pid)
	prog := xdpProg(t, w)
	st0 := nexusStats(t, w.bin, w.sock)
	const upgrades = 20
	for i := range upgrades {
		w.upgrade(t)
		l.progress(t, fmt.Sprintf("after upgrade %d", i+1))
		if p := xdpProg(t, w); p != prog {
			t.Fatalf("after upgrade %d the XDP program is %d, was %d", i+1, p, prog)
		}
	}
	after := resources(t, w.nx.cmd.Process.Pid)
	// The counters went on growing, and the sessions are the same apps'
	// (names, pids, channels), each with its flows.
	st1 := nexusStats(t, w.bin, w.sock)
	if st1.Totals.Packets <= st0.Totals.Packets || st1.Link.RxPackets <= st0.Link.RxPackets {
		t.Errorf("counters restarted: switch %d then %d packets, link %d then %d",
			st0.Totals.Packets, st1.Totals.Packets, st0.Link.RxPackets, st1.Link.RxPackets)
	}
	t.Logf("nexus after %d upgrades: link %+v; drops %+v", upgrades, st1.Link, st1.Drops)
	// The apps' listener ports are still the kernel's to refuse: the
	// reservations moved with the nexus.
	if err := w.v.Local.Do(func() error {
		for _, a := range []string{upHTTP, upBulk} {
			if ln, err := net.Listen("tcp4", a); err == nil {
				ln.Close()
				t.Errorf("a kernel socket could bind %s after the upgrades: the reservation was lost", a)
			}
		}
		if pc, err := net.ListenPacket("udp4", upUDP); err == nil {
			pc.Close()
			t.Errorf("a kernel socket could bind %s after the upgrades: the reservation was lost", upUDP)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	apps := func(st control.Stats) map[string]string {
		m := map[string]string{}
		for _, s := range st.Sessions {
			if s.Channel != "" {
				m[s.App] = fmt.Sprintf("pid %d channel %s flows>0 %v", s.PID, s.Channel, s.Flows > 0)
			}
		}
		return m
	}
	if a0, a1 := apps(st0), apps(st1); fmt.Sprint(a0) != fmt.Sprint(a1) || len(a1) != 3 {
		t.Errorf("sessions after %d upgrades: %v, before: %v", upgrades, a1, a0)
	}
	for k, v := range before {
		if after[k] != v {
			t.Errorf("the nexus after %d upgrades holds %d %s, the first held %d (all: %v, first: %v)", upgrades, after[k], k, v, after, before)
		}
	}
	// systemctl reload: SIGUSR2 makes the nexus start the next one
	// itself, which takes over and says so through the old one's output.
	pid := w.nx.cmd.Process.Pid
	w.nx.cmd.Process.Signal(syscall.SIGUSR2)
	next := waitLockPID(t, w.sock, pid)
	waitGone(t, pid)
	l.progress(t, "after the upgrade by SIGUSR2")
	if txt := w.nx.text(); !strings.Contains(txt, `msg="took over"`) || !strings.Contains(txt, fmt.Sprintf("pid=%d", next)) {
		t.Errorf("the nexus started by SIGUSR2 did not take over:\n%s", txt)
	}
	l.finish(t)
	for _, a := range w.apps {
		if strings.Contains(a.text(), "fatal") {
			t.Errorf("an app failed:\n%s", a.text())
		}
	}
	// SIGTERM: everything goes.
	syscall.Kill(next, syscall.SIGTERM)
	waitGone(t, next)
	for _, p := range []string{w.sock, w.sock + ".lock", w.sock + ".takeover"} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	(&world{driver: drivers.AFXDP, local: w.v.Local, dev: w.v.LocalName}).checkDetached(t)
}

// waitLockPID waits until the control socket's lock file names a pid
// other than old, and returns it.
func waitLockPID(t *testing.T, sock string, old int) int {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for {
		b, _ := os.ReadFile(sock + ".lock")
		var pid int
		if _, err := fmt.Sscan(string(b), &pid); err == nil && pid != old && pid > 0 {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lock file still names %q after %v", b, opTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitGone waits until process pid no longer exists.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs after %v", pid, opTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUpgradeRefused: a takeover killed at each step of the hand-over,
// and one by a binary of another state version: the old nexus serves on
// (every connection with it) and holds what it held before. Then one that
// works. The apps run under a rate here: the switch's regulation layer
// is on.
func TestUpgradeRefused(t *testing.T) {
	w := newUpgradeWorld(t, upgradeRated, true)
	l := w.startLoad(t)
	l.progress(t, "before the takeovers")
	pid := w.nx.cmd.Process.Pid
	before := resources(t, pid)
	cases := []struct{ env, want string }{
		{"SKYLANE_TAKEOVER_STATE_VERSION=99", "incompatible state version"},
		{"SKYLANE_TAKEOVER_DIE_AT=hello", "dying on purpose"},
		{"SKYLANE_TAKEOVER_DIE_AT=freeze", "dying on purpose"},
		{"SKYLANE_TAKEOVER_DIE_AT=state", "dying on purpose"},
		{"SKYLANE_TAKEOVER_DIE_AT=adopted", "dying on purpose"},
	}
	for _, c := range cases {
		w.failedTakeover(t, []string{c.env}, c.want)
		l.progress(t, "after a takeover with "+c.env)
		// The old nexus thaws once it sees the new process gone.
		if after := resources(t, pid); !equalCounts(before, after) {
			t.Errorf("after a takeover with %s the nexus holds %v, before %v", c.env, after, before)
		}
	}
	// And a takeover that works still does.
	w.upgrade(t)
	l.progress(t, "after the upgrade")
	l.finish(t)
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// xdpProg returns the id of the XDP program attached to the nexus's
// device.
func xdpProg(t *testing.T, w *upgradeWorld) uint32 {
	t.Helper()
	var id uint32
	err := w.v.Local.Do(func() error {
		nl, err := w.v.Local.Netlink()
		if err != nil {
			return err
		}
		defer nl.Close()
		l, err := nl.LinkByName(w.v.LocalName)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			id = x.ProgId
		}
		return nil
	})
	if err != nil || id == 0 {
		t.Fatalf("no XDP program on %s: %v", w.v.LocalName, err)
	}
	return id
}

// TestUpgradeNotAFXDP: a nexus on AF_PACKET refuses a takeover, saying
// to restart instead, and serves on.
func TestUpgradeNotAFXDP(t *testing.T) {
	nettest.RequirePriv(t)
	bin := skylaneBinary(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	sock := filepath.Join(sharedDir(t), "nexus.sock")
	args := []string{"nexus", "--driver", drivers.AFPacket, "--dev", v.LocalName, "--peer-mac", v.PeerMAC.String(), "--socket", sock}
	nx := startProc(t, v.Local.Command, bin, args, `msg="nexus started"`)
	w := &upgradeWorld{v: v, bin: bin, sock: sock, args: args, nx: nx}
	w.failedTakeover(t, nil, "cannot be handed over (AF_XDP only): restart the nexus instead")
	nexusStats(t, bin, sock) // still answers
	if err := nx.terminate(t); err != nil {
		t.Fatalf("nexus after SIGTERM: %v\n%s", err, nx.text())
	}
}
