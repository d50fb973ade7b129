package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	ctl "github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/asuser"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/packet"
)

// socketGroup is the --socket-group of the tests' nexus; the apps' processes
// are members.
const socketGroup = 4242

// daemonPolicy gives each of three uids its own port on the local IPv4
// address and one distinctive permission or limit. Ports 8081-8083 are
// the apps' HTTP servers.
const daemonPolicy = `
[[allow]]     # app a: a few flows, no dialling
uid = 65534
tcp = ["8081"]
udp = ["5301-5309"]
addrs = ["198.18.0.1"]
max_flows = 3

[[allow]]     # app b: may dial the peer only
uid = 65533
tcp = ["8082", "8092"]
addrs = ["198.18.0.1"]
dial = true
dial_to = ["198.18.0.2/32"]

[[allow]]     # app c: a small pool
uid = 65532
tcp = ["8083"]
addrs = ["198.18.0.1"]
max_pool = "1MiB"
`

// daemonApps are the apps and their probes: each is refused outside its
// rule (another app's port, a privileged port, another address, past its
// flow limit, a dial without dial) and cannot tear down another's flow.
var daemonApps = []struct {
	uid uint32
	cfg appConfig
}{
	{65534, appConfig{Name: "a", Listen: "198.18.0.1:8081", Probes: []probe{
		{Name: "another app's port", Op: "listen", Address: "198.18.0.1:8082", Want: "refused"},
		{Name: "a privileged port", Op: "listen", Address: "198.18.0.1:80", Want: "refused"},
		{Name: "another address", Op: "listen", Address: "[2001:2::1]:8081", Want: "refused"},
		{Name: "every address", Op: "listenpacket", Address: ":5301", Want: "refused"},
		{Name: "flow 2 of 3", Op: "listenpacket", Address: "198.18.0.1:5301", Want: "ok", Keep: true},
		{Name: "flow 3 of 3", Op: "listenpacket", Address: "198.18.0.1:5302", Want: "ok", Keep: true},
		{Name: "flow 4 of 3", Op: "listenpacket", Address: "198.18.0.1:5303", Want: "refused"},
		{Name: "a dial without dial", Op: "dial", Address: "198.18.0.2:9191", Want: "refused"},
	}}},
	{65533, appConfig{Name: "b", Listen: "198.18.0.1:8082", Probes: []probe{
		{Name: "a dial to the peer", Op: "dial", Address: "198.18.0.2:9191", Want: "ok"},
		{Name: "a dial outside dial_to", Op: "dial", Address: "198.18.0.3:9191", Want: "refused"},
		{Name: "a privileged port", Op: "listen", Address: "198.18.0.1:443", Want: "refused"},
		{Name: "every address", Op: "listen", Address: ":8092", Want: "refused"},
		{Name: "tear down a's listener", Op: "teardown", Address: "198.18.0.1:8081", Want: "noflow"},
		{Name: "send on a's port", Op: "spoof", Address: "198.18.0.1:8081", Want: "ok"},
	}}},
	{65532, appConfig{Name: "c", Listen: "198.18.0.1:8083", Probes: []probe{
		{Name: "another app's port", Op: "listen", Address: "198.18.0.1:8081", Want: "refused"},
		{Name: "another address", Op: "listen", Address: "[2001:2::1]:8083", Want: "refused"},
		{Name: "a dial without dial", Op: "dial", Address: "198.18.0.2:9191", Want: "refused"},
		{Name: "over its memory limit", Op: "hog", Address: "1048576", Want: "ok"},
	}}},
}

// TestNexusDaemon runs `skylane nexus` on a veth (AF_XDP, AF_PACKET) with
// a policy and three app processes under three uids. Each serves its own
// port to the kernel's curl in the peer namespace and is refused outside
// its rule (its pool stops at max_pool); none can tear down or send on
// another's flows (a capture at the peer shows none); kill -9 of each app
// frees its port for the next; kill -9 of the nexus leaves a socket file
// a new nexus replaces at once; SIGTERM leaves nothing behind.
func TestNexusDaemon(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "curl")
	bin := skylaneBinary(t)
	app := appBinary(t)
	for _, d := range ethDrivers {
		t.Run(d, func(t *testing.T) {
			v := nettest.NewVeth(t, nettest.VethOptions{})
			if d == drivers.AFXDP {
				wireChecksums(t, v)
			}
			// A kernel server in the peer namespace for b's dial.
			var kln net.Listener
			if err := v.Peer.Do(func() (err error) { kln, err = net.Listen("tcp4", "198.18.0.2:9191"); return err }); err != nil {
				t.Fatal(err)
			}
			defer kln.Close()
			go func() {
				for {
					c, err := kln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()

			args, sock := nexusdArgs(t, d, v)
			nx := startProc(t, v.Local.Command, bin, args, `msg="nexus started"`)
			capt := startCapture(t, v.Peer, v.PeerName)

			apps := make([]*proc, len(daemonApps))
			for i, a := range daemonApps {
				apps[i] = startApp(t, app, a.uid, sock, a.cfg)
			}
			for i, a := range daemonApps {
				for _, l := range apps[i].lines() {
					if strings.Contains(l, "FAIL") {
						t.Errorf("app %s (uid %d): %s", a.cfg.Name, a.uid, l)
					}
				}
				checkCurl(t, v.Peer, a.cfg, a.uid)
			}

			st := nexusStats(t, bin, sock)
			byUID := map[uint32]control.SessionStats{}
			for _, s := range st.Sessions {
				if s.Channel != "" && !strings.HasSuffix(s.App, "-raw") {
					byUID[s.UID] = s
				}
			}
			for _, a := range daemonApps {
				s, ok := byUID[a.uid]
				if !ok || s.App != a.cfg.Name || s.PID != int32(appPID(t, apps, a.uid)) {
					t.Errorf("stats: no session of app %s (uid %d) with its pid: %+v", a.cfg.Name, a.uid, s)
				}
			}
			if c := byUID[65532]; c.PoolMax != 1<<20 {
				t.Errorf("app c's pool is capped at %d bytes, want 1 MiB (max_pool)", c.PoolMax)
			}
			if a := byUID[65534]; a.PoolMax <= 1<<20 {
				t.Errorf("app a's pool is capped at %d bytes, want the nexus's default", a.PoolMax)
			}
			if st.Refused < 11 {
				t.Errorf("nexus counted %d refusals, want at least 11", st.Refused)
			}
			// b's packets on a's port and on a made-up flow: all dropped
			// by the transmit checks (which run when the nexus next
			// serves b's ring: waited for), none on the wire.
			for deadline := time.Now().Add(opTimeout); spoofDrops(st) < appSpoofs; st = nexusStats(t, bin, sock) {
				if time.Now().After(deadline) {
					t.Errorf("transmit checks dropped %d packets for owner, port or flow ID, want at least %d: %+v", spoofDrops(st), appSpoofs, st.Drops)
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			// tshark writes its file in its own time: wait until b's honest
			// packet, which came after its lies, is in it.
			for deadline := time.Now().Add(opTimeout); ; time.Sleep(20 * time.Millisecond) {
				if b, _ := os.ReadFile(capt.file); bytes.Contains(b, []byte(tagValid+"after-spoofs")) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("b's honest packet after its spoofs is not in the capture after %v", opTimeout)
					break
				}
			}
			pkts, err := capt.stop(t)
			if err != nil {
				t.Fatalf("read capture: %v", err)
			}
			valid := 0 // b's honest packet after its lies
			for _, p := range pkts {
				if bytes.Contains(p.Data(), []byte(tagSpoof)) {
					t.Errorf("a spoofed packet left: %v", p)
				}
				// (The peer's ICMP port unreachable quotes it again.)
				if ul, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && string(ul.Payload) == tagValid+"after-spoofs" {
					valid++
				}
			}
			if valid != 1 {
				t.Errorf("the capture saw b's honest packet after its spoofs %d times in %d frames, want once", valid, len(pkts))
			}

			// kill -9 of each app frees its port: a new app of the same
			// uid takes it and serves.
			for i, a := range daemonApps {
				apps[i].kill(t)
				waitSessionGone(t, bin, sock, apps[i].cmd.Process.Pid)
				cfg := a.cfg
				cfg.Probes = nil
				apps[i] = startApp(t, app, a.uid, sock, cfg)
				checkCurl(t, v.Peer, a.cfg, a.uid)
			}

			if !strings.Contains(nx.text(), `msg="session end"`) || !strings.Contains(nx.text(), "msg=refused") {
				t.Errorf("nexus log lacks session ends or refusals:\n%s", nx.text())
			}

			// kill -9 of the nexus: a new one replaces its socket at once.
			nx.kill(t)
			for _, a := range apps {
				a.kill(t)
			}
			nx = startProc(t, v.Local.Command, bin, args, `msg="nexus started"`)
			apps[0] = startApp(t, app, daemonApps[0].uid, sock, appConfig{Name: "a", Listen: daemonApps[0].cfg.Listen})
			checkCurl(t, v.Peer, daemonApps[0].cfg, daemonApps[0].uid)
			apps[0].kill(t)

			// SIGTERM: exit 0, nothing left behind.
			if err := nx.terminate(t); err != nil {
				t.Fatalf("nexus after SIGTERM: %v\n%s", err, nx.text())
			}
			for _, p := range []string{sock, sock + ".lock"} {
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left behind: %v", p, err)
				}
			}
			w := &world{driver: d, local: v.Local, dev: v.LocalName}
			w.checkDetached(t)
		})
	}
}

// TestNexusDaemonLinkGone: when its interface is deleted, the nexus says
// so and exits 1; a second nexus on a live one's socket is refused.
func TestNexusDaemonLinkGone(t *testing.T) {
	nettest.RequirePriv(t)
	bin := skylaneBinary(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	sock := filepath.Join(sharedDir(t), "nexus.sock")
	args := []string{"nexus", "--driver", drivers.AFPacket, "--dev", v.LocalName, "--socket", sock}
	nx := startProc(t, v.Local.Command, bin, args, `msg="nexus started"`)

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := v.Local.Command(ctx, bin, args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another nexus serves this socket") {
		t.Errorf("second nexus on a live socket: %v: %s", err, out)
	}

	nl, err := v.Local.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l, err := nl.LinkByName(v.LocalName)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	select {
	case <-nx.exited:
	case <-time.After(opTimeout):
		t.Fatalf("nexus still running %v after its interface was deleted:\n%s", opTimeout, nx.text())
	}
	var ee *exec.ExitError
	// Deleting a veth first sets it down: either reason will do.
	if !errors.As(nx.err, &ee) || ee.ExitCode() != 1 || !strings.Contains(nx.text(), "interface "+v.LocalName+" ") {
		t.Errorf("nexus after its interface was deleted: %v (want exit status 1 naming the interface):\n%s", nx.err, nx.text())
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

// spoofDrops counts the transmit checks' drops for a packet on another's
// port or flow, or under a flow ID the app does not hold.
func spoofDrops(st control.Stats) uint64 {
	var n uint64
	for _, d := range st.Drops {
		if d.Dir == "tx" && (d.Reason == "src_port" || d.Reason == "not_owner" || d.Reason == "flow_id" || d.Reason == "proto") {
			n += d.Packets
		}
	}
	return n
}

// sharedDir is a directory the apps' uids can search, removed at the end.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "skylane-nexusd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

var (
	appOnce sync.Once
	appPath string
	appErr  error
)

// appBinary is a copy of this test binary that other uids can execute
// (the go tool's build directory is root's alone), beside skylaneBinary's.
func appBinary(t *testing.T) string {
	t.Helper()
	skylaneBinary(t) // makes binDir
	appOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			appErr = err
			return
		}
		b, err := os.ReadFile(self)
		if err != nil {
			appErr = err
			return
		}
		appPath = filepath.Join(binDir, "e2e-app")
		appErr = os.WriteFile(appPath, b, 0o755)
	})
	if appErr != nil {
		t.Fatal(appErr)
	}
	return appPath
}

// startApp starts app (a copy of this test binary running TestNexusdApp)
// under uid, with gid uid and socketGroup, and waits until it serves.
func startApp(t *testing.T, app string, uid uint32, sock string, cfg appConfig) *proc {
	t.Helper()
	cfg.Socket = sock
	b, _ := json.Marshal(cfg)
	cmd := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		c := exec.CommandContext(ctx, name, args...)
		c.Env = append(os.Environ(), appEnv+"="+string(b))
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{socketGroup}}}
		return c
	}
	return startProc(t, cmd, app, []string{"-test.run=^TestNexusdApp$", "-test.v=false"}, "app: ready")
}

// checkCurl fetches the app's page from the peer namespace.
func checkCurl(t *testing.T, peer *nettest.NS, cfg appConfig, uid uint32) {
	t.Helper()
	out := curl(t, peer, "http://"+cfg.Listen+"/")
	if want := fmt.Sprintf("hello from %s uid %d", cfg.Name, uid); !strings.HasPrefix(out, want) {
		t.Errorf("curl %s: %q, want %q", cfg.Listen, out, want)
	}
}

// nexusStats runs `skylane stats --json` as root.
func nexusStats(t *testing.T, bin, sock string) control.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "stats", "--nexus", sock, "--json").Output()
	if err != nil {
		t.Fatalf("skylane stats: %v", err)
	}
	var st control.Stats
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("skylane stats: %v: %s", err, out)
	}
	return st
}

// waitSessionGone waits until no session of pid is left.
func waitSessionGone(t *testing.T, bin, sock string, pid int) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for {
		gone := true
		for _, s := range nexusStats(t, bin, sock).Sessions {
			if s.PID == int32(pid) {
				gone = false
			}
		}
		if gone {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nexus still has a session of pid %d %v after it was killed", pid, opTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proc is a process of a test, with its output lines.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    []string // every line of stdout and stderr
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startProc starts name args (made by mk, e.g. a namespace's Command) and
// waits until a line of its output contains ready. It is killed, if still
// running, when the test ends.
func startProc(t *testing.T, mk func(context.Context, string, ...string) *exec.Cmd, name string, args []string, ready string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	p := &proc{exited: make(chan struct{})}
	p.cmd = mk(ctx, name, args...)
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		pw.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.exited
		if t.Failed() {
			t.Logf("%s %s:\n%s", filepath.Base(name), strings.Join(args, " "), p.text())
		}
	})
	deadline := time.After(opTimeout)
	for {
		select {
		case l := <-lines:
			if strings.Contains(l, ready) {
				return p
			}
		case <-p.exited:
			t.Fatalf("%s exited before it was ready: %v\n%s", name, p.err, p.text())
		case <-deadline:
			t.Fatalf("%s not ready within %v:\n%s", name, opTimeout, p.text())
		}
	}
}

func (p *proc) lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.out...)
}

func (p *proc) text() string { return strings.Join(p.lines(), "\n") }

// kill sends SIGKILL and waits for the exit.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(opTimeout):
		t.Fatalf("%v still running after SIGKILL", p.cmd.Args)
	}
}

// terminate sends SIGTERM and returns the exit's error.
func (p *proc) terminate(t *testing.T) error {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(opTimeout):
		return errors.New("still running after SIGTERM")
	}
}

// appPID returns the pid of the app of uid among apps (in daemonApps order).
func appPID(t *testing.T, apps []*proc, uid uint32) int {
	for i, a := range daemonApps {
		if a.uid == uid {
			return apps[i].cmd.Process.Pid
		}
	}
	t.Fatalf("no app of uid %d", uid)
	return 0
}

// TestNexusDaemonReload: SIGHUP reloads the policy without dropping
// sessions; the open session's next request is checked against the new
// rule; a policy that does not parse is refused and the old one kept.
func TestNexusDaemonReload(t *testing.T) {
	nettest.RequirePriv(t)
	bin := skylaneBinary(t)
	dir := sharedDir(t)
	pol := filepath.Join(dir, "policy.toml")
	write := func(s string) {
		if err := os.WriteFile(pol, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("[[allow]]\nuid = 65534\ntcp = [\"8081\"]\n")
	sock := filepath.Join(dir, "nexus.sock")
	nx := startProc(t, exec.CommandContext, bin, []string{"nexus", "--driver", drivers.Memif, "--addr", "198.18.0.1",
		"--socket", sock, "--socket-group", fmt.Sprint(socketGroup), "--policy", pol}, `msg="nexus started"`)

	var s *ctl.Session
	if err := asuser.Do(65534, 65534, []uint32{socketGroup}, func() (err error) {
		s, err = ctl.Open(sock, "reload", ctl.OpenOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lis := func(port uint16) error {
		k := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), port), netip.AddrPort{}).Listener3()
		_, err := s.Register(k, flow.Listener3)
		return err
	}
	if err := lis(8081); err != nil {
		t.Fatal(err)
	}
	if err := lis(8082); !errors.Is(err, ctl.ErrNotPermitted) {
		t.Fatalf("8082 before reload: %v, want ErrNotPermitted", err)
	}
	reload := func(want string) {
		t.Helper()
		n := strings.Count(nx.text(), want)
		nx.cmd.Process.Signal(syscall.SIGHUP)
		deadline := time.Now().Add(opTimeout)
		for strings.Count(nx.text(), want) == n {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log %v after SIGHUP:\n%s", want, opTimeout, nx.text())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	write("[[allow]]\nuid = 65534\ntcp = [\"8081\", \"8082\"]\n")
	reload(`msg="policy reloaded"`)
	if err := lis(8082); err != nil {
		t.Errorf("8082 after reload: %v", err)
	}
	write("[[allow]]\nuid = 65534\ntcp = [\"8081\", \"8082\", \"8083\"]\nports = 1\n")
	reload(`msg="policy reload failed; keeping the old policy"`)
	if err := lis(8083); !errors.Is(err, ctl.ErrNotPermitted) {
		t.Errorf("8083 after a failed reload: %v, want ErrNotPermitted (old policy kept)", err)
	}
	if err := nx.terminate(t); err != nil {
		t.Fatalf("nexus after SIGTERM: %v\n%s", err, nx.text())
	}
}
