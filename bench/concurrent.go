package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/skylane/skylane/internal/connload"
)

// conns/concurrent=100000: connsConcN connections held open at once to a
// user-space server, then a request on each (a line each way). The
// clients are kernel sockets in child processes in the peer namespace
// (package connload), connsConcPerKid each (a process may hold 20,000
// descriptors on this machine), each from its own peer address so that no
// address runs out of ports. The value is memory per connection on the server's side, lower
// is better. Ours is the growth of this process's RSS (the nexus and the
// app, with its handler goroutine per connection) over the connections it
// held. The kernel server's is its process's RSS growth (the same handler
// on net.Conn) plus, per connection, the slab objects an accepted socket
// holds in the kernel (kernelSockCaches: the socket, its inode, file,
// dentry and epoll entry, at their sizes in /proc/slabinfo), plus the
// growth of TCP's buffer pages (/proc/net/sockstat "mem"). The kernel's
// slab growth as a whole is not used: it counts the clients' sockets too,
// and slab caches keep freed objects. The kernel server cannot hold
// 100,000 connections: it holds as many as its descriptor limit allows
// (RLIMIT_NOFILE, less some slack), and the row says how many; a
// user-space stack needs no descriptor per connection. It runs first, so
// that ours' memory is not returned to the OS within its window. One
// round each: the row takes minutes.
const (
	connsConcRow    = "conns/concurrent=100000"
	connsConcN      = 100000
	connsConcPerKid = 10000
	connsConcDialN  = 4 // dials in flight per client process
	connsConcPort   = 5303
	connsConcKern   = 5304
	connsClientRole = "conns-client,"
	connsConcWait   = 5 * time.Minute // bounds each phase
)

// kernelSockCaches are the slab caches an accepted TCP socket of a Go
// server takes an object of.
var kernelSockCaches = []string{"TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi"}

// concPeer is the first of the peer addresses the client processes dial
// from, one each: 198.18.0.10 and up, on the peer's veth.
var concPeer = netip.MustParseAddr("198.18.0.10")

// concFigures are one side's figures.
type concFigures struct {
	opened, served, held int
	open                 time.Duration // until every client had its connections open
	rss, sockMem         int64         // growth while the connections were held
}

func concurrentRow(cfg Config, h *udpHosts) (Result, error) {
	cfg.progress("conns %s", connsConcRow)
	if err := h.addPeerAddrs(connsConcN / connsConcPerKid); err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsConcRow, err)
	}
	sockBytes, err := slabBytes(kernelSockCaches)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsConcRow, err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsConcRow, err)
	}
	kn := min(connsConcN, int(lim.Cur)-512)
	var kln net.Listener
	err = inNS(h.local, func() (err error) {
		kln, err = net.Listen("tcp4", netip.AddrPortFrom(udpLocal, connsConcKern).String())
		return err
	})
	if err != nil {
		return Result{}, fmt.Errorf("%s: kernel server: %w", connsConcRow, err)
	}
	ks := serveHold(kln)
	base, err := h.holdMany(cfg, connsConcRow+" baseline", connsConcKern, kn, ks.held)
	kln.Close()
	<-ks.done
	if err != nil {
		return Result{}, fmt.Errorf("%s baseline: %w", connsConcRow, err)
	}
	u, err := h.newUserServerOn(connsConcPort, true)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsConcRow, err)
	}
	ours, err := h.holdMany(cfg, connsConcRow, connsConcPort, connsConcN, u.held)
	u.close()
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsConcRow, err)
	}
	perConn := func(f concFigures, sock int64) float64 {
		return (float64(f.rss+f.sockMem)/float64(max(f.held, 1)) + float64(sock)) / 1024
	}
	res := Latency(connsConcRow, "KiB/conn", perConn(ours, 0), "", "kernel TCP server on the same veth, as many connections as its descriptors allow",
		perConn(base, sockBytes), "")
	res.Extra = map[string]any{
		"held_ours":                  ours.held,
		"served_ours":                ours.served,
		"open_s_ours":                round2(ours.open.Seconds()),
		"open_per_s_ours":            round2(float64(ours.opened) / ours.open.Seconds()),
		"rss_mib_ours":               round2(float64(ours.rss) / (1 << 20)),
		"held_kernel":                base.held,
		"served_kernel":              base.served,
		"open_s_kernel":              round2(base.open.Seconds()),
		"open_per_s_kernel":          round2(float64(base.opened) / base.open.Seconds()),
		"rss_mib_kernel":             round2(float64(base.rss) / (1 << 20)),
		"kernel_sock_bytes_per_conn": sockBytes,
		"kernel_sock_caches":         strings.Join(kernelSockCaches, "+"),
		"sock_mem_mib_kernel":        round2(float64(base.sockMem) / (1 << 20)),
		"client_processes":           connsConcN / connsConcPerKid,
		"kernel_fd_limit":            lim.Cur,
	}
	return res, nil
}

// slabBytes returns the sum of the object sizes of the named slab caches
// (those the kernel has: some merge into others).
func slabBytes(caches []string) (int64, error) {
	b, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || !slices.Contains(caches, f[0]) {
			continue
		}
		n, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/slabinfo: %q: %w", l, err)
		}
		sum += n
	}
	if sum == 0 {
		return 0, errors.New("/proc/slabinfo names none of the socket caches")
	}
	return sum, nil
}

// addPeerAddrs adds n addresses from concPeer on to the peer's veth.
func (h *udpHosts) addPeerAddrs(n int) error {
	pl, err := netlink.NewHandleAt(h.peer)
	if err != nil {
		return err
	}
	defer pl.Close()
	l, err := pl.LinkByName(h.peerIf)
	if err != nil {
		return err
	}
	a := concPeer
	for range n {
		if err := pl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("peer address %v: %w", a, err)
		}
		a = a.Next()
	}
	return nil
}

// holdMany has client processes open n connections to port on udpLocal,
// sends a request on each (some handshakes complete at a server only with
// the request: a final ACK dropped after a SYN cookie is not sent again),
// waits until the server (held: its count of open connections) holds every
// connection served, measures, and ends the clients.
func (h *udpHosts) holdMany(cfg Config, name string, port uint16, n int, held func() int) (f concFigures, err error) {
	self, err := os.Executable()
	if err != nil {
		return f, err
	}
	before, err := memFigures()
	if err != nil {
		return f, err
	}
	start := time.Now()
	var kids []*connsKid
	defer func() {
		for _, k := range kids {
			k.end()
		}
	}()
	src := concPeer
	for left := n; left > 0; left -= connsConcPerKid {
		k, err := startConnsKid(self, h.peerNS, netip.AddrPortFrom(udpLocal, port), src, min(left, connsConcPerKid))
		if err != nil {
			return f, err
		}
		kids = append(kids, k)
		src = src.Next()
	}
	for _, k := range kids {
		m, err := k.result("open")
		if err != nil {
			return f, err
		}
		f.opened += m
	}
	f.open = time.Since(start)
	cfg.progress("  %s: %d open in %v", name, f.opened, f.open.Round(time.Millisecond))
	for _, k := range kids {
		k.say("go")
	}
	for _, k := range kids {
		m, err := k.result("served")
		if err != nil {
			return f, err
		}
		f.served += m
	}
	deadline := time.Now().Add(connsConcWait)
	for held() < f.served && time.Now().Before(deadline) {
		select {
		case <-cfg.Stop:
			return f, fmt.Errorf("%s: %w", name, ErrInterrupted)
		case <-time.After(10 * time.Millisecond):
		}
	}
	f.held = held()
	after, err := memFigures()
	if err != nil {
		return f, err
	}
	f.rss, f.sockMem = after.rss-before.rss, after.sockMem-before.sockMem
	return f, nil
}

// memFigures returns this process's RSS (after a GC that returns freed
// memory to the OS) and TCP's buffer memory, in bytes.
func memFigures() (m struct{ rss, sockMem int64 }, err error) {
	debug.FreeOSMemory()
	if m.rss, err = rssBytes(); err != nil {
		return m, err
	}
	// TCP: inuse N orphan N tw N alloc N mem PAGES (global, not per namespace).
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return m, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				pages, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil {
					return m, fmt.Errorf("/proc/net/sockstat: %q: %w", l, err)
				}
				m.sockMem = pages * int64(os.Getpagesize())
			}
		}
	}
	return m, nil
}

// holdServer serves a listener with serveHold's handler.
type holdServer struct {
	open atomic.Int64
	done chan struct{}
}

func (s *holdServer) held() int { return int(s.open.Load()) }

// serveHold serves ln until it is closed: per connection, a goroutine
// that answers each request line with "pong " and the line (the
// connload protocol) until its peer closes the connection. done is closed
// once the accept loop and every connection's goroutine returned; closing
// ln ends the accept loop, the connections end with their peers (or their
// stack).
func serveHold(ln net.Listener) *holdServer {
	s := &holdServer{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					// Out of descriptors: the kernel keeps the
					// connection queued; look again in a while.
					time.Sleep(time.Millisecond)
					continue
				}
				if errors.As(err, &ne) && ne.Temporary() {
					continue // a connection refused by a limit
				}
				return
			}
			s.open.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer s.open.Add(-1)
				defer c.Close()
				r := bufio.NewReaderSize(c, 64)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, "pong "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

// connsKid is one client process.
type connsKid struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startConnsKid(self, ns string, server netip.AddrPort, src netip.Addr, n int) (*connsKid, error) {
	k := &connsKid{cmd: exec.Command("ip", "netns", "exec", ns, self)}
	spec := connload.Spec{Server: server, Source: src, Count: n, InFlight: connsConcDialN}
	k.cmd.Env = append(os.Environ(), childEnv+"="+connsClientRole+spec.String())
	k.cmd.Stderr = os.Stderr
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if k.in, err = k.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := k.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	k.out = bufio.NewScanner(out)
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	return k, nil
}

// result reads the kid's next line, "<what> N failed M ...", and returns N.
func (k *connsKid) result(what string) (int, error) {
	done := make(chan struct{})
	t := time.AfterFunc(connsConcWait, func() { k.cmd.Process.Kill() })
	defer func() { t.Stop(); close(done) }()
	if !k.out.Scan() {
		return 0, fmt.Errorf("client process %d: no %q line (%v)", k.cmd.Process.Pid, what, k.out.Err())
	}
	f := strings.Fields(k.out.Text())
	if len(f) < 2 || f[0] != what {
		return 0, fmt.Errorf("client process %d: %q, want %q", k.cmd.Process.Pid, k.out.Text(), what)
	}
	return strconv.Atoi(f[1])
}

func (k *connsKid) say(s string) { io.WriteString(k.in, s+"\n") }

// end closes the kid's stdin (it closes its connections and exits) and
// reaps it, killing it if it does not exit within a few seconds.
func (k *connsKid) end() {
	k.in.Close()
	t := time.AfterFunc(10*time.Second, func() { k.cmd.Process.Kill() })
	k.cmd.Wait()
	t.Stop()
}

// connsClient is a client process (role connsClientRole, then a
// connload.Spec).
func connsClient(args string) error {
	spec, err := connload.ParseSpec(args)
	if err != nil {
		return err
	}
	return connload.Run(spec, os.Stdin, os.Stdout)
}
