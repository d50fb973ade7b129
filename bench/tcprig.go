package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
)

// connPair is two connected endpoints of one path: a stream (client →
// server, the server discards) and an RPC connection (the server echoes).
type connPair struct {
	streamTx, streamRx net.Conn
	rpcC, rpcS         net.Conn
	received           atomic.Int64 // bytes streamRx has read
	rxDone             chan error
	closers            []func()
}

func (p *connPair) close() {
	for _, c := range []net.Conn{p.streamTx, p.streamRx, p.rpcC, p.rpcS} {
		if c != nil {
			c.Close()
		}
	}
	if p.rxDone != nil {
		<-p.rxDone
	}
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}

// connect dials two connections through dial/accept and starts the
// stream's reader and the RPC echo server.
func (p *connPair) connect(ln net.Listener, dial func() (net.Conn, error)) error {
	accepted := make(chan net.Conn, 2)
	acceptErr := make(chan error, 1)
	go func() {
		for range 2 {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	var conns [2]net.Conn
	for i := range conns {
		c, err := dial()
		if err != nil {
			return err
		}
		conns[i] = c
		select {
		case s := <-accepted:
			if i == 0 {
				p.streamTx, p.streamRx = c, s
			} else {
				p.rpcC, p.rpcS = c, s
			}
		case err := <-acceptErr:
			c.Close()
			return err
		case <-time.After(10 * time.Second):
			c.Close()
			return errors.New("accept timed out")
		}
	}
	p.rxDone = make(chan error, 1)
	go func() {
		buf := make([]byte, tcpWrite)
		for {
			n, err := p.streamRx.Read(buf)
			p.received.Add(int64(n))
			if err != nil {
				p.rxDone <- err
				return
			}
		}
	}()
	go func() {
		var b [rpcSize]byte
		for {
			if _, err := io.ReadFull(p.rpcS, b[:]); err != nil {
				return
			}
			if _, err := p.rpcS.Write(b[:]); err != nil {
				return
			}
		}
	}()
	return nil
}

// stream sends for d and returns the bits the receiver read in that time.
// It returns once everything sent was received, so the next measurement
// (perhaps of the baseline) starts on an idle path.
func (p *connPair) stream(d time.Duration) (Rate, error) {
	var stop atomic.Bool
	var sent atomic.Int64
	werr := make(chan error, 1)
	base := p.received.Load()
	go func() {
		buf := make([]byte, tcpWrite)
		for !stop.Load() {
			n, err := p.streamTx.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	cpu0, cerr := sampleCPU()
	c0, t0 := p.received.Load(), time.Now()
	time.Sleep(d) // the measurement window
	c1, t1 := p.received.Load(), time.Now()
	cpu1, cerr1 := sampleCPU()
	stop.Store(true)
	if err := <-werr; err != nil {
		return Rate{}, fmt.Errorf("stream write: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.received.Load()-base < sent.Load() {
		if time.Now().After(deadline) {
			return Rate{}, fmt.Errorf("stream: %d of %d bytes arrived", p.received.Load()-base, sent.Load())
		}
		runtime.Gosched()
	}
	if err := errors.Join(cerr, cerr1); err != nil {
		return Rate{}, err
	}
	return Rate{Count: float64(c1-c0) * 8, Elapsed: t1.Sub(t0), cpu: cpu1.since(cpu0)}, nil
}

// rpc runs 64-byte request/response round trips for d, at least one
// however late the goroutine runs, and returns their latencies.
func (p *connPair) rpc(d time.Duration) ([]time.Duration, error) {
	var req, resp [rpcSize]byte
	var lat []time.Duration
	end := time.Now().Add(d)
	for i := 0; i == 0 || time.Now().Before(end); i++ {
		req[0] = byte(i)
		t0 := time.Now()
		if _, err := p.rpcC.Write(req[:]); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(p.rpcC, resp[:]); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
		if resp[0] != req[0] {
			return nil, fmt.Errorf("rpc: response %d to request %d", resp[0], req[0])
		}
	}
	return lat, nil
}

// skyPair is the Skylane path: two nexuses on the two ends of a memif wire
// (MTU 1500, carrying super packets whole unless asked not to), a client
// stack on each, and the connections between them.
type skyPair struct {
	connPair
	na, nb *nexus.Nexus
	sa, sb *client.Stack
}

func newSkyPair(opts client.Options, super bool) (_ *skyPair, err error) {
	p := &skyPair{}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if p.na, p.nb, p.sa, p.sb, err = skyHosts(opts, super); err != nil {
		return nil, err
	}
	p.closers = append(p.closers, func() { p.sa.Close(); p.sb.Close(); p.na.Close(); p.nb.Close() })
	ln, err := p.sa.Listen("tcp4", ":"+strconv.Itoa(tcpPortNum))
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	addr := netip.AddrPortFrom(tcpHostA, tcpPortNum).String()
	return p, p.connect(ln, func() (net.Conn, error) { return p.sb.Dial("tcp4", addr) })
}

// skyHosts builds the two hosts of the Skylane path, on a wire that
// carries super packets whole if super. On error what was built is closed.
func skyHosts(opts client.Options, super bool) (na, nb *nexus.Nexus, sa, sb *client.Stack, err error) {
	mo := memif.Options{Name: "tcp", MTU: tcpMTU, QueueLen: tcpWireQueue}
	if super {
		mo.MaxSuperPacketLen, mo.QueueLen = tcpSuperLen, tcpSuperQueue
	}
	la, lb, err := memif.NewPair(mo)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	closeAll := func() {
		for _, s := range []*client.Stack{sa, sb} {
			if s != nil {
				s.Close()
			}
		}
		for _, n := range []*nexus.Nexus{na, nb} {
			if n != nil {
				n.Close()
			}
		}
	}
	// A busy-polling app gets busy-polling nexuses, with the same budget.
	if na, err = nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{tcpHostA}, BusyPoll: opts.BusyPoll}); err != nil {
		la.Close()
		return nil, nil, nil, nil, err
	}
	if nb, err = nexus.New(nexus.Options{Link: lb, Addrs: []netip.Addr{tcpHostB}, BusyPoll: opts.BusyPoll}); err != nil {
		closeAll()
		return nil, nil, nil, nil, err
	}
	opts.Name = "a"
	if sa, err = client.New(inproc.Nexus(na), opts); err != nil {
		closeAll()
		return nil, nil, nil, nil, err
	}
	opts.Name = "b"
	if sb, err = client.New(inproc.Nexus(nb), opts); err != nil {
		closeAll()
		return nil, nil, nil, nil, err
	}
	return na, nb, sa, sb, nil
}

func newKernelPair() (_ *connPair, err error) {
	p := &connPair{}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	if err := p.connect(ln, func() (net.Conn, error) { return net.Dial("tcp4", ln.Addr().String()) }); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// newPipePair joins two netstacks with gVisor's link/pipe at MTU 1500, with
// the same TCP options as the client stacks (buffers, SACK, moderation).
func newPipePair() (_ *connPair, err error) {
	p := &connPair{}
	ea, eb := pipe.New("", "", tcpMTU)
	var stacks []*gstack.Stack
	p.closers = append(p.closers, func() {
		for _, s := range stacks {
			s.Destroy()
		}
	})
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	addrs := []tcpip.Address{tcpip.AddrFrom4([4]byte{10, 0, 0, 1}), tcpip.AddrFrom4([4]byte{10, 0, 0, 2})}
	for i, ep := range []*pipe.Endpoint{ea, eb} {
		s := gstack.New(gstack.Options{
			NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol},
			TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol},
		})
		stacks = append(stacks, s)
		for _, o := range []tcpip.SettableTransportProtocolOption{
			ptrTo(tcpip.TCPSACKEnabled(true)),
			ptrTo(tcpip.TCPModerateReceiveBufferOption(true)),
			&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: client.DefaultBufferSize, Max: client.MaxBufferSize},
			&tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: client.DefaultBufferSize, Max: client.MaxBufferSize},
		} {
			if terr := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); terr != nil {
				return nil, fmt.Errorf("tcp option: %s", terr)
			}
		}
		if terr := s.CreateNIC(1, ep); terr != nil {
			return nil, fmt.Errorf("create NIC: %s", terr)
		}
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: addrs[i].WithPrefix()}
		if terr := s.AddProtocolAddress(1, pa, gstack.AddressProperties{}); terr != nil {
			return nil, fmt.Errorf("add address: %s", terr)
		}
		s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	}
	ln, err := gonet.ListenTCP(stacks[0], tcpip.FullAddress{NIC: 1, Addr: addrs[0], Port: tcpPortNum}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	err = p.connect(ln, func() (net.Conn, error) {
		return gonet.DialTCP(stacks[1], tcpip.FullAddress{NIC: 1, Addr: addrs[0], Port: tcpPortNum}, ipv4.ProtocolNumber)
	})
	return p, err
}

func ptrTo[T any](v T) *T { return &v }
