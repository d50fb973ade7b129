package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
)

// The conns scenario: what a new connection costs. conns/accept-rate is
// new TCP connections per second that a server accepts and answers (one
// byte each way, the server closes), from connClientsN kernel clients in
// the peer namespace over a veth pair: ours a user-space server (a
// client.Stack on a nexus on AF_XDP), baseline a kernel server on the same
// veth, in the same run, alternating rounds. The user-space server is set
// up and closed per round, so the baseline runs with no program attached.
//
// Ours keeps TIME-WAIT at connsTimeWait (the server closes first, so it
// holds TIME-WAIT): 60 s at a few thousand connections per second would
// hold a few hundred thousand netstack endpoints, where the kernel keeps a
// small timewait socket.
const (
	connsAcceptRow  = "conns/accept-rate"
	connsBaseName   = "kernel TCP server on the same veth, same clients"
	connsUserPort   = 5301
	connsKernPort   = 5302
	connsClientsN   = 16 // as ab -c16
	connsTimeWait   = time.Second
	connsDialTimout = 5 * time.Second
)

func runConns(cfg Config) (rep Report, err error) {
	rep = Report{Scenario: "conns", Machine: Machine()}
	if !cfg.wants(connsAcceptRow) && !cfg.wants(connsChurnRow) && !cfg.wants(connsConcRow) {
		return rep, nil
	}
	if os.Geteuid() != 0 {
		return rep, errors.New("conns: needs root (network namespaces, AF_XDP): run skylane bench conns as root")
	}
	h, err := newUDPHosts() // the two hosts of the udp rows
	if err != nil {
		return rep, fmt.Errorf("conns: %w", err)
	}
	defer func() { err = errors.Join(err, h.close()) }()
	var kln net.Listener
	err = inNS(h.local, func() (err error) {
		kln, err = net.Listen("tcp4", netip.AddrPortFrom(udpLocal, connsKernPort).String())
		return err
	})
	if err != nil {
		return rep, fmt.Errorf("conns: kernel server: %w", err)
	}
	kdone := serveOneByte(kln)
	defer func() { kln.Close(); <-kdone }()

	for _, row := range []struct {
		name string
		run  func(Config, *udpHosts) (Result, error)
	}{{connsAcceptRow, acceptRow}, {connsChurnRow, churnRow}, {connsConcRow, concurrentRow}} {
		if !cfg.wants(row.name) {
			continue
		}
		res, err := row.run(cfg, h)
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

// acceptRow measures conns/accept-rate: ours and the kernel server
// (connsKernPort in h.local) alternately.
func acceptRow(cfg Config, h *udpHosts) (Result, error) {
	cfg.progress("conns %s", connsAcceptRow)
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	var ours, base []float64
	var figs connsFigures
	for i := range rounds {
		if err := cfg.roundStart(connsAcceptRow, i, rounds); err != nil {
			return Result{}, err
		}
		r, f, err := h.userAccepts(d)
		if err != nil {
			return Result{}, fmt.Errorf("%s: %w", connsAcceptRow, err)
		}
		ours = append(ours, r)
		figs.add(f)
		b, failed, err := acceptRate(h.peerDial(connsKernPort), d)
		if err != nil {
			return Result{}, fmt.Errorf("%s baseline: %w", connsAcceptRow, err)
		}
		base = append(base, b)
		figs.baseFailed += failed
	}
	res := Throughput(connsAcceptRow, "conn/s", median(ours), connsBaseName, median(base))
	res.Extra = map[string]any{
		"clients":                  connsClientsN,
		"failed_ours":              figs.failed,
		"failed_baseline":          figs.baseFailed,
		"flows_per_register_batch": round2(float64(figs.auto) / float64(max(figs.batches, 1))),
		"switch_rx_ring_drops":     figs.rxDrops,
		"switch_tx_drops":          figs.txDrops,
		"link_rx_drops":            figs.linkDrops,
		"user_time_wait_s":         connsTimeWait.Seconds(),
		// Accepted connections take no entry in the AF_XDP steering
		// map (their listener's covers them): the map held this many
		// at most, for all the connections of a round.
		"steer_map_entries": figs.steered,
	}
	return res, nil
}

// connsFigures are the user-space side's counters, summed over the rounds.
type connsFigures struct {
	failed, baseFailed uint64
	auto, batches      uint64 // flows the stack registered on demand, in how many batches
	rxDrops, txDrops   uint64
	linkDrops          uint64 // frames the device dropped before the nexus saw them (AF_XDP: fill ring empty)
	steered            int    // most entries in the steering map seen at the end of a round
}

func (f *connsFigures) add(g connsFigures) {
	f.failed += g.failed
	f.auto += g.auto
	f.batches += g.batches
	f.rxDrops += g.rxDrops
	f.txDrops += g.txDrops
	f.linkDrops += g.linkDrops
	f.steered = max(f.steered, g.steered)
}

// userServer is the user-space server of the conns rows: an AF_XDP link
// on the local end of the veth, a nexus, a stack and a listener serving
// serveOneByte.
type userServer struct {
	nx   *nexus.Nexus
	st   *client.Stack
	ln   net.Listener
	done <-chan struct{}
	hold *holdServer // serving serveHold, not serveOneByte
}

// newUserServer builds the user-space server; close closes it all again.
func (h *udpHosts) newUserServer() (_ *userServer, err error) {
	return h.newUserServerOn(connsUserPort, false)
}

// held returns how many connections a serveHold server holds.
func (u *userServer) held() int { return u.hold.held() }

// newUserServerOn is newUserServer on port, serving serveHold if hold.
func (h *udpHosts) newUserServerOn(port int, hold bool) (_ *userServer, err error) {
	var link netif.Link
	err = inNS(h.local, func() (err error) {
		link, err = drivers.Open(drivers.Spec{Driver: drivers.AFXDP, Dev: h.localIf})
		return err
	})
	if err != nil {
		return nil, err
	}
	u := &userServer{}
	defer func() {
		if err != nil {
			u.close()
		}
	}()
	u.nx, err = nexus.New(nexus.Options{Link: link, Addrs: []netip.Addr{udpLocal},
		Switch: flowswitch.Options{SrcMAC: [6]byte(h.localMAC), DstMAC: [6]byte(h.peerMAC)}})
	if err != nil {
		link.Close()
		return nil, err
	}
	if u.st, err = client.New(inproc.Nexus(u.nx), client.Options{Name: "conns", TimeWait: connsTimeWait}); err != nil {
		return nil, err
	}
	if u.ln, err = u.st.Listen("tcp4", ":"+strconv.Itoa(port)); err != nil {
		return nil, err
	}
	if hold {
		u.hold = serveHold(u.ln)
		u.done = u.hold.done
	} else {
		u.done = serveOneByte(u.ln)
	}
	return u, nil
}

// close closes the listener, then the stack (which ends the connections
// still open: a held one waits for its peer otherwise), then waits for the
// handlers and closes the nexus.
func (u *userServer) close() {
	if u.ln != nil {
		u.ln.Close()
	}
	if u.st != nil {
		u.st.Close()
	}
	if u.done != nil {
		<-u.done
	}
	if u.nx != nil {
		u.nx.Close()
	}
}

// userAccepts builds the user-space server, measures its accept rate for
// d, and closes it all again.
func (h *udpHosts) userAccepts(d time.Duration) (float64, connsFigures, error) {
	var f connsFigures
	u, err := h.newUserServer()
	if err != nil {
		return 0, f, err
	}
	defer u.close()
	s0, err := u.nx.Stats()
	if err != nil {
		return 0, f, err
	}
	e0 := u.st.Endpoint().Stats()
	r, failed, err := acceptRate(h.peerDial(connsUserPort), d)
	if err != nil {
		return 0, f, err
	}
	s1, err := u.nx.Stats()
	if err != nil {
		return 0, f, err
	}
	e1 := u.st.Endpoint().Stats()
	f.failed = failed
	f.auto, f.batches = e1.FlowsAuto-e0.FlowsAuto, e1.RegisterBatches-e0.RegisterBatches
	f.rxDrops = s1.Switch.RxRingDrops - s0.Switch.RxRingDrops
	f.txDrops = s1.Switch.TxDrops.Total() - s0.Switch.TxDrops.Total()
	f.linkDrops = s1.Link.RxDrops - s0.Link.RxDrops
	f.steered = max(f.steered, s1.Steered)
	return r, f, nil
}

// serveOneByte serves ln until it is closed: per connection, read a byte,
// write it back, close. The returned channel is closed once the accept
// loop and every connection's goroutine returned.
func serveOneByte(ln net.Listener) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Temporary() {
					continue // a connection refused by a limit
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(connsDialTimout))
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err == nil {
					c.Write(b[:])
				}
			}()
		}
	}()
	return done
}

// acceptRate runs connsClientsN clients for d, each opening connections
// one after the other (dial, a byte each way, the server closes), and
// returns the completed connections per second and how many failed. It
// fails if more than half failed.
func acceptRate(dial func() (net.Conn, error), d time.Duration) (float64, uint64, error) {
	var ok, failed atomic.Uint64
	var first atomic.Value
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range connsClientsN {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := oneConn(dial); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	el := time.Since(start)
	if failed.Load() > ok.Load() {
		return 0, failed.Load(), fmt.Errorf("%d of %d connections failed, first: %v", failed.Load(), failed.Load()+ok.Load(), first.Load())
	}
	return float64(ok.Load()) / el.Seconds(), failed.Load(), nil
}

func oneConn(dial func() (net.Conn, error)) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(connsDialTimout))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	var b [2]byte
	if n, err := io.ReadFull(c, b[:]); n != 1 || err != io.ErrUnexpectedEOF {
		return fmt.Errorf("answer: %d bytes, %v", n, err)
	}
	return nil
}
