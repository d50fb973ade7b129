package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/skylane/skylane/client"
)

// The upgrade scenario (docs/upgrade.md): a `skylane nexus` process on
// AF_XDP owns the local end of a veth pair (the udp rows' two
// namespaces); an app in this process attaches over its control socket
// and serves a UDP echo and a bulk TCP stream to the kernel's sockets in
// the peer namespace. Then the nexus is replaced upgradeRounds times by a
// takeover (`skylane nexus --takeover`: the new process receives the
// device, channels and sessions, the app notices nothing) and, alternating
// in the same run, upgradeRounds times by the baseline, a plain restart:
// SIGTERM, a fresh nexus, and the app re-attaching
// (client.ConnectOptions.Reattach) with its listeners.
//
//   - upgrade/blackout: the longest gap between two answers of a 64-byte
//     UDP request/response stream (one request per ms) across a
//     replacement, from just before it starts to upgradeSettle after the
//     new nexus serves; p50 over the rounds (max in extra).
//   - upgrade/bulk: the longest stall of the bulk TCP stream (between two
//     reads of the kernel's receiver) over the same window. A restart
//     kills the connection without a reset; the receiver takes a
//     connection silent for upgradeDeadConn for dead and redials, so the
//     baseline's stall is that plus the time to a new connection's first
//     bytes.
//
// Extra figures: how long the old nexus was frozen (as the new one saw
// it, freeze request to commit), UDP requests without an answer over the
// whole run (mostly the restarts'), and the blackout figure over the same
// window with nothing replaced (no_replacement_*): the machine's own
// noise, which bounds what any replacement can show.
//
// Lower is better. The targets: blackout p50 <= 50 ms, max <= 250
// ms. The nexus binary is this one (os.Executable), or $SKYLANE_BIN.
const (
	upgradeBlackoutRow = "upgrade/blackout"
	upgradeBulkRow     = "upgrade/bulk"
	upgradeBaseName    = "plain restart of the nexus, the app re-attaching"
	upgradeRounds      = 10
	upgradeUDPPort     = 7001
	upgradeBulkPort    = 7002
	// upgradeSettle is how long after the new nexus says it serves the
	// window stays open: long enough for a stalled stream to show.
	upgradeSettle = 300 * time.Millisecond
	// upgradeResume bounds the wait for both streams to flow again
	// after a replacement (a restart's AF_XDP bind waits up to 3 s for
	// the kernel to release the old socket's queue).
	upgradeResume = 15 * time.Second
	// upgradeDeadConn is how long the bulk receiver waits on a silent
	// connection before it takes it for dead and redials: a restart
	// loses the connection without a reset (the app's stack goes with
	// its port), so the baseline's stall is this plus the redial.
	upgradeDeadConn = time.Second
)

func runUpgrade(cfg Config) (Report, error) {
	bin := os.Getenv("SKYLANE_BIN")
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return Report{}, fmt.Errorf("upgrade: the skylane binary: %w", err)
		}
	}
	return runUpgradeWith(cfg, bin, upgradeRounds)
}

// runUpgradeWith runs the scenario with the nexus binary bin, rounds
// replacements of each kind.
func runUpgradeWith(cfg Config, bin string, rounds int) (rep Report, err error) {
	rep = Report{Scenario: "upgrade", Machine: Machine()}
	if !cfg.wants(upgradeBlackoutRow) && !cfg.wants(upgradeBulkRow) {
		return rep, nil
	}
	if os.Geteuid() != 0 {
		return rep, errors.New("upgrade: needs root (network namespaces, AF_XDP): run skylane bench upgrade as root")
	}
	h, err := newUDPHosts()
	if err != nil {
		return rep, fmt.Errorf("upgrade: %w", err)
	}
	defer func() { err = errors.Join(err, h.close()) }()
	dir, err := os.MkdirTemp("", "skylane-bench-upgrade")
	if err != nil {
		return rep, fmt.Errorf("upgrade: %w", err)
	}
	defer os.RemoveAll(dir)
	u := &upgradeRun{bin: bin, h: h, sock: filepath.Join(dir, "nexus.sock"), cfg: cfg}
	if u.nx, err = u.start(false); err != nil {
		return rep, fmt.Errorf("upgrade: %w", err)
	}
	defer func() { u.nx.stop() }()
	app, err := u.startApp()
	if err != nil {
		return rep, fmt.Errorf("upgrade: app: %w", err)
	}
	defer app.Close()
	load, err := u.startLoad()
	if err != nil {
		return rep, fmt.Errorf("upgrade: load: %w", err)
	}
	defer load.stop()
	if err := load.waitFlowing(time.Now(), upgradeResume); err != nil {
		return rep, fmt.Errorf("upgrade: before the first round: %w", err)
	}
	var ours, base [2][]float64 // blackout, bulk stall, in ms
	var frozen []float64        // as the new nexus saw it, in ms
	var quiet []float64         // the blackout figure over a window without a replacement
	for i := range rounds {
		if err := cfg.roundStart("upgrade", i, rounds); err != nil {
			return rep, err
		}
		b, s, err := u.replace(load, true)
		if err != nil {
			return rep, fmt.Errorf("upgrade round %d: %w", i+1, err)
		}
		ours[0], ours[1] = append(ours[0], b), append(ours[1], s)
		frozen = append(frozen, u.nx.frozenMs())
		if b, s, err = u.replace(load, false); err != nil {
			return rep, fmt.Errorf("restart round %d: %w", i+1, err)
		}
		// The same window with nothing replaced: the machine's own noise.
		t0 := time.Now()
		time.Sleep(upgradeSettle + 30*time.Millisecond)
		quiet = append(quiet, load.udp.maxGap(t0, time.Now()))
		base[0], base[1] = append(base[0], b), append(base[1], s)
		cfg.progress("  takeover: blackout %.1f ms, bulk stall %.1f ms (frozen %.0f ms); restart: %.1f ms, %.1f ms",
			ours[0][i], ours[1][i], frozen[i], base[0][i], base[1][i])
	}
	for k, name := range []string{upgradeBlackoutRow, upgradeBulkRow} {
		if !cfg.wants(name) {
			continue
		}
		r := Latency(name, "ms", pct(ours[k], 50), "", upgradeBaseName, pct(base[k], 50), "")
		r.Extra = map[string]any{
			"p50_ms": round2(pct(ours[k], 50)), "max_ms": round2(slices.Max(ours[k])),
			"baseline_p50_ms": round2(pct(base[k], 50)), "baseline_max_ms": round2(slices.Max(base[k])),
			"rounds": rounds,
		}
		if k == 0 {
			r.Extra["udp_lost"] = load.udpLost()
			r.Extra["frozen_p50_ms"] = round2(pct(frozen, 50))
			r.Extra["frozen_max_ms"] = round2(slices.Max(frozen))
			r.Extra["no_replacement_p50_ms"] = round2(pct(quiet, 50))
			r.Extra["no_replacement_max_ms"] = round2(slices.Max(quiet))
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

// pct is the p-th percentile of v (nearest rank).
func pct(v []float64, p int) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p+99)/100-1)]
}

type upgradeRun struct {
	bin  string
	h    *udpHosts
	sock string
	cfg  Config
	nx   *nexusProc
}

// nexusProc is a `skylane nexus` process in the local namespace.
type nexusProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	out    []string
}

// frozenMs is how long the nexus this one took over from was frozen, as
// it logged it (-1 if it did not).
func (p *nexusProc) frozenMs() float64 {
	for _, l := range strings.Split(p.text(), "\n") {
		if i := strings.Index(l, "frozen_ms="); i >= 0 && strings.Contains(l, `msg="took over"`) {
			var ms float64
			fmt.Sscan(l[i+len("frozen_ms="):], &ms)
			return ms
		}
	}
	return -1
}

func (p *nexusProc) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

// stop ends the process (SIGTERM, then SIGKILL) and waits for it.
func (p *nexusProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// start starts a nexus (a takeover of the running one if takeover) and
// waits until it serves.
func (u *upgradeRun) start(takeover bool) (*nexusProc, error) {
	args := []string{"netns", "exec", u.h.localNS, u.bin, "nexus", "--driver", "afxdp", "--dev", u.h.localIf,
		"--peer-mac", u.h.peerMAC.String(), "--socket", u.sock}
	if takeover {
		args = append(args, "--takeover")
	}
	p := &nexusProc{cmd: exec.Command("ip", args...), exited: make(chan struct{})}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			if strings.Contains(sc.Text(), `msg="nexus started"`) {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() { p.cmd.Wait(); pw.Close(); close(p.exited) }()
	select {
	case <-ready:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("nexus exited before it served:\n%s", p.text())
	case <-time.After(upgradeResume):
		p.stop()
		return nil, fmt.Errorf("nexus not serving after %v:\n%s", upgradeResume, p.text())
	}
}

// replace replaces the nexus by a takeover (or a restart) and returns
// the UDP blackout and the bulk stall across it, in ms.
func (u *upgradeRun) replace(load *upgradeLoad, takeover bool) (blackout, stall float64, err error) {
	t0 := time.Now()
	old := u.nx
	if !takeover {
		old.stop()
	}
	nx, err := u.start(takeover)
	if err != nil {
		return 0, 0, err
	}
	u.nx = nx
	if takeover {
		select {
		case <-old.exited:
		case <-time.After(upgradeResume):
			return 0, 0, fmt.Errorf("the old nexus still runs after the takeover:\n%s", old.text())
		}
	}
	if err := load.waitFlowing(time.Now(), upgradeResume); err != nil {
		return 0, 0, err
	}
	time.Sleep(upgradeSettle)
	t1 := time.Now()
	return load.udp.maxGap(t0, t1), load.bulk.maxGap(t0, t1), nil
}

// startApp attaches an app in this process: a UDP echo and a bulk TCP
// server, re-attaching when the nexus restarts.
func (u *upgradeRun) startApp() (io.Closer, error) {
	nx, err := client.ConnectWith(u.sock, client.ConnectOptions{Reattach: true})
	if err != nil {
		return nil, err
	}
	st, err := client.New(nx, client.Options{Name: "upgrade-bench", TimeWait: time.Second})
	if err != nil {
		return nil, err
	}
	pc, err := st.ListenPacket("udp4", netip.AddrPortFrom(udpLocal, upgradeUDPPort).String())
	if err != nil {
		st.Close()
		return nil, err
	}
	ln, err := st.Listen("tcp4", netip.AddrPortFrom(udpLocal, upgradeBulkPort).String())
	if err != nil {
		st.Close()
		return nil, err
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, client.ErrClosed) || errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				pc.WriteTo(buf[:n], from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, client.ErrClosed) || errors.Is(err, net.ErrClosed) {
					return
				}
				continue // the nexus went: Accept waits for the re-attach
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return st, nil
}

// upgradeLoad is the kernel's side: the UDP request stream and the bulk
// receiver, in the peer namespace, each recording when data arrived.
type upgradeLoad struct {
	udp, bulk arrivals
	done      chan struct{}
	wg        sync.WaitGroup
	mu        sync.Mutex
	sent      uint64 // guarded by mu
}

// arrivals records when data arrived.
type arrivals struct {
	mu sync.Mutex
	at []time.Time
}

func (a *arrivals) add(t time.Time) {
	a.mu.Lock()
	a.at = append(a.at, t)
	a.mu.Unlock()
}

func (a *arrivals) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.at)
}

// since reports whether data arrived after t.
func (a *arrivals) since(t time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.at) > 0 && a.at[len(a.at)-1].After(t)
}

// maxGap is the longest time without an arrival in [t0, t1], in ms.
func (a *arrivals) maxGap(t0, t1 time.Time) float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, _ := slices.BinarySearchFunc(a.at, t0, func(x, t time.Time) int { return x.Compare(t) })
	prev := t0
	if i > 0 {
		prev = a.at[i-1]
	}
	var gap time.Duration
	for ; i < len(a.at) && !a.at[i].After(t1); i++ {
		gap = max(gap, a.at[i].Sub(prev))
		prev = a.at[i]
	}
	gap = max(gap, t1.Sub(prev))
	return float64(gap) / float64(time.Millisecond)
}

func (u *upgradeRun) startLoad() (*upgradeLoad, error) {
	l := &upgradeLoad{done: make(chan struct{})}
	var uc *net.UDPConn
	err := inNS(u.h.peer, func() (err error) {
		uc, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(udpLocal, upgradeUDPPort)))
		return err
	})
	if err != nil {
		return nil, err
	}
	l.wg.Add(3)
	go func() { // one 64-byte request per ms
		defer l.wg.Done()
		defer uc.Close() // ends the reader
		req := make([]byte, 64)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-l.done:
				return
			case <-t.C:
			}
			uc.Write(req)
			l.mu.Lock()
			l.sent++
			l.mu.Unlock()
		}
	}()
	go func() {
		defer l.wg.Done()
		buf := make([]byte, 128)
		for {
			if _, err := uc.Read(buf); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP unreachable while the app is away
			}
			l.udp.add(time.Now())
		}
	}()
	go func() { // the bulk receiver, redialling when its connection dies
		defer l.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			var c net.Conn
			err := inNS(u.h.peer, func() (err error) {
				d := net.Dialer{Timeout: time.Second}
				c, err = d.Dial("tcp4", netip.AddrPortFrom(udpLocal, upgradeBulkPort).String())
				return err
			})
			if err != nil {
				select {
				case <-l.done:
					return
				case <-time.After(10 * time.Millisecond):
				}
				continue
			}
			stop := context.AfterFunc(ctxDone(l.done), func() { c.Close() })
			for {
				c.SetReadDeadline(time.Now().Add(upgradeDeadConn))
				if _, err := c.Read(buf); err != nil {
					break
				}
				l.bulk.add(time.Now())
			}
			stop()
			c.Close()
			select {
			case <-l.done:
				return
			default:
			}
		}
	}()
	return l, nil
}

// ctxDone is a context cancelled when done closes.
func ctxDone(done <-chan struct{}) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-done; cancel() }()
	return ctx
}

// waitFlowing waits until both streams delivered after t.
func (l *upgradeLoad) waitFlowing(t time.Time, within time.Duration) error {
	deadline := time.Now().Add(within)
	for !l.udp.since(t) || !l.bulk.since(t) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the streams did not flow again within %v (udp: %v, bulk: %v)", within, l.udp.since(t), l.bulk.since(t))
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// udpLost is how many requests got no answer.
func (l *upgradeLoad) udpLost() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent - min(l.sent, uint64(l.udp.count()))
}

func (l *upgradeLoad) stop() {
	close(l.done)
	l.wg.Wait()
}
