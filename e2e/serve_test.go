package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
)

// buildTimeout bounds `go build` of the binary (cold caches included).
const buildTimeout = 5 * time.Minute

// The binary is built once per test run, into a directory every user may
// read (the not-root case runs it as nobody); TestMain removes it.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// skylaneBinary returns the path of a freshly built cmd/skylane.
func skylaneBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "skylane-e2e-bin"); binErr != nil {
			return
		}
		if binErr = os.Chmod(binDir, 0o755); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "skylane")
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", binPath, "../cmd/skylane").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ../cmd/skylane: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// removeBinary removes what skylaneBinary built; TestMain calls it.
func removeBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// serveProc is `skylane serve` running as a process in a namespace.
type serveProc struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	out    chan string // stdout lines
	stderr strings.Builder
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startServeProc starts `bin serve args...` inside ns (ip netns exec) and
// waits until it prints its listening lines.
func startServeProc(t *testing.T, ns *nettest.NS, bin string, args ...string) *serveProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	p := &serveProc{cancel: cancel, out: make(chan string, 64), exited: make(chan struct{})}
	p.cmd = ns.Command(ctx, bin, append([]string{"serve"}, args...)...)
	p.cmd.Stderr = &lockedWriter{b: &p.stderr}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.out <- sc.Text():
			default:
			}
		}
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.exited
	})
	deadline := time.After(opTimeout)
	for {
		select {
		case line := <-p.out:
			t.Logf("serve: %s", line)
			if strings.HasPrefix(line, "user-space TCP/IP stack on") {
				return p
			}
		case <-p.exited:
			t.Fatalf("serve exited before listening: %v\n%s", p.err, p.stderrText())
		case <-deadline:
			t.Fatalf("serve did not listen within %v:\n%s", opTimeout, p.stderrText())
		}
	}
}

func (p *serveProc) stderrText() string {
	lw := p.cmd.Stderr.(*lockedWriter)
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return p.stderr.String()
}

// terminate sends SIGTERM and waits for the exit.
func (p *serveProc) terminate(t *testing.T) error {
	t.Helper()
	// ip netns exec execs the binary in place: the process is skylane.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.exited:
		return p.err
	case <-time.After(opTimeout):
		return errors.New("serve did not exit within the timeout after SIGTERM")
	}
}

type lockedWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestServeBinary builds skylane, runs `skylane serve` in the local
// namespace on each driver, fetches its page with curl from the peer
// (HTTPS on one of them), stops it with SIGTERM and checks it exited
// cleanly and left no program on the interface (and, for TUN, no device).
func TestServeBinary(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "curl")
	bin := skylaneBinary(t)
	for _, c := range []struct {
		driver string
		tls    bool
	}{{drivers.AFXDP, true}, {drivers.AFPacket, false}, {drivers.TUN, false}} {
		t.Run(c.driver, func(t *testing.T) {
			var local, peer *nettest.NS
			var args []string
			var target, dev string
			if c.driver == drivers.TUN {
				ns := nettest.NewNS(t)
				local, peer, dev = ns, ns, uniqueName("skt")
				args = []string{"--driver", c.driver, "--dev", dev, "--addr", "198.18.1.2:8080", "--tun-addr", "198.18.1.1/24"}
				target = "198.18.1.2:8080"
			} else {
				v := nettest.NewVeth(t, nettest.VethOptions{})
				if c.driver == drivers.AFXDP {
					wireChecksums(t, v)
				}
				local, peer, dev = v.Local, v.Peer, v.LocalName
				args = []string{"--driver", c.driver, "--dev", dev, "--addr", "198.18.0.1:8080"}
				target = "198.18.0.1:8080"
			}
			scheme := "http"
			if c.tls {
				args, scheme = append(args, "--tls"), "https"
			}
			p := startServeProc(t, local, bin, args...)
			for range 3 {
				out := curl(t, peer, "-k", scheme+"://"+target+"/")
				if !strings.HasPrefix(out, "hello from skylane") {
					t.Fatalf("curl: %q", out)
				}
			}
			if err := p.terminate(t); err != nil {
				t.Fatalf("serve after SIGTERM: %v\n%s", err, p.stderrText())
			}
			if !strings.Contains(p.stderrText(), "stopping after 3 requests") {
				t.Errorf("serve's last words: %q", p.stderrText())
			}
			// The interface is as before: no program, or no device.
			err := local.Do(func() error {
				nl, err := local.Netlink()
				if err != nil {
					return err
				}
				defer nl.Close()
				l, err := nl.LinkByName(dev)
				if c.driver == drivers.TUN {
					if err == nil {
						t.Errorf("TUN device %s left behind", dev)
					}
					return nil
				}
				if err != nil {
					return err
				}
				if x := l.Attrs().Xdp; x != nil && x.Attached {
					t.Errorf("XDP program %d left on %s", x.ProgId, dev)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if c.driver != drivers.TUN {
				// The kernel has the port back: it refuses the connection.
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				defer cancel()
				out, err := peer.Command(ctx, "curl", "-sS", "--max-time", "5", "http://"+target+"/").CombinedOutput()
				if err == nil || !strings.Contains(string(out), "Couldn't connect") {
					t.Errorf("after serve: curl %v: %s (want the kernel's refusal)", err, out)
				}
			}
		})
	}
}

// TestServeBinaryErrors: serve's errors as a user meets them: exit status 1
// and a message that says what is wrong and what to do, for a missing
// interface, a port a kernel socket holds, and a user who is not root.
func TestServeBinaryErrors(t *testing.T) {
	nettest.RequirePriv(t)
	bin := skylaneBinary(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	var kln net.Listener
	if err := v.Local.Do(func() (err error) { kln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer kln.Close()
	run := func(cmd *exec.Cmd) (int, string) {
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%v: %v (want exit status 1)\n%s", cmd.Args, err, out)
		}
		return ee.ExitCode(), string(out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, c := range []struct {
		name string
		cmd  *exec.Cmd
		want string
	}{
		{"no such interface", v.Local.Command(ctx, bin, "serve", "--dev", "nope0", "--addr", ":8080"), "no such network interface"},
		{"port held by the kernel", v.Local.Command(ctx, bin, "serve", "--dev", v.LocalName, "--addr", ":8080"),
			"port 8080/tcp is held by a kernel socket"},
		{"not root", func() *exec.Cmd {
			cmd := exec.CommandContext(ctx, bin, "serve", "--dev", v.LocalName, "--addr", ":8080")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			return cmd
		}(), "needs root"},
	} {
		code, out := run(c.cmd)
		if code != 1 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, %q; want 1 and %q", c.name, code, out, c.want)
		} else {
			t.Logf("%s: %s", c.name, strings.TrimSpace(out))
		}
	}
}
