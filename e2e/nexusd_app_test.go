package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet/packettest"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// appEnv carries an app process's appConfig (JSON); TestNexusdApp runs as
// that app when it is set.
const appEnv = "SKYLANE_E2E_APP"

// appConfig is what one app process of TestNexusDaemon does: attach to
// the nexus, serve HTTP on its port, and try its probes first.
type appConfig struct {
	Socket string
	Name   string
	Listen string // tcp4 address it serves HTTP on
	Echo   string // udp4 address it echoes datagrams on, if any
	Probes []probe
}

// probe is one request an app tries before it serves, and what the nexus
// must answer.
type probe struct {
	Name    string
	Op      string // "listen" (TCP), "listenpacket" (UDP), "dial" (TCP), "teardown" (another app's TCP listener, over a raw session), "spoof" (see spoofFrom), "hog" (see hog)
	Address string // what the op takes
	Want    string // "ok", "refused" (ErrNotPermitted) or "noflow" (nexus.ErrNoFlow)
	Keep    bool   // keep what it opened until all probes ran (to fill max_flows)
}

// TestNexusdApp is not a test of its own: it is the app process that
// TestNexusDaemon starts under other uids, with appEnv set. Its output
// lines start with "app: "; it serves until killed.
func TestNexusdApp(t *testing.T) {
	cfg := os.Getenv(appEnv)
	if cfg == "" {
		t.Skip("the app process of TestNexusDaemon; runs only as its child")
	}
	var c appConfig
	if err := json.Unmarshal([]byte(cfg), &c); err != nil {
		fmt.Printf("app: fatal: config: %v\n", err)
		os.Exit(2)
	}
	if err := runApp(c); err != nil {
		fmt.Printf("app: fatal: %v\n", err)
		os.Exit(2)
	}
	os.Exit(0)
}

func runApp(c appConfig) error {
	nx, err := client.Connect(c.Socket)
	if err != nil {
		return err
	}
	st, err := client.New(nx, client.Options{Name: c.Name, TimeWait: time.Second})
	if err != nil {
		return err
	}
	defer st.Close()
	ln, err := st.Listen("tcp4", c.Listen)
	if err != nil {
		return fmt.Errorf("listen on its own port %s: %w", c.Listen, err)
	}
	var kept []io.Closer
	for _, p := range c.Probes {
		cl, err := p.run(c, st)
		if cl != nil {
			if p.Keep {
				kept = append(kept, cl)
			} else {
				cl.Close()
			}
		}
		got := "ok"
		switch {
		case errors.Is(err, client.ErrNotPermitted):
			got = "refused"
		case errors.Is(err, nexus.ErrNoFlow):
			got = "noflow"
		case err != nil:
			got = "error"
		}
		if got == p.Want {
			fmt.Printf("app: probe %s: %s as wanted (%v)\n", p.Name, got, err)
		} else {
			fmt.Printf("app: probe %s: FAIL: got %s, want %s: %v\n", p.Name, got, p.Want, err)
		}
	}
	for _, k := range kept {
		k.Close()
	}
	if c.Echo != "" {
		pc, err := st.ListenPacket("udp4", c.Echo)
		if err != nil {
			return fmt.Errorf("listen on its own UDP port %s: %w", c.Echo, err)
		}
		go echoUntilClosed(pc) // until the app exits
	}
	fmt.Printf("app: ready uid=%d pid=%d\n", os.Getuid(), os.Getpid())
	banner := fmt.Sprintf("hello from %s uid %d\n", c.Name, os.Getuid())
	return http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) { io.WriteString(rw, banner) }))
}

func (p probe) run(c appConfig, st *client.Stack) (io.Closer, error) {
	switch p.Op {
	case "listen":
		return st.Listen("tcp", p.Address)
	case "listenpacket":
		return st.ListenPacket("udp4", p.Address)
	case "dial":
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return st.DialContext(ctx, "tcp4", p.Address)
	case "teardown":
		s, err := control.Open(c.Socket, c.Name+"-raw", control.OpenOptions{})
		if err != nil {
			return nil, err
		}
		ap := netip.MustParseAddrPort(p.Address)
		err = s.Teardown(packet.MakeKey(packet.ProtoTCP, ap, netip.AddrPort{}).Listener3())
		return s, err
	case "spoof":
		return spoofFrom(c, netip.MustParseAddrPort(p.Address))
	case "hog":
		var limit int
		fmt.Sscan(p.Address, &limit)
		return hog(c, limit)
	}
	return nil, fmt.Errorf("unknown probe op %q", p.Op)
}

// Spoofing from an app process: spoofPerKind packets of each kind.
const appSpoofs = 2 * spoofPerKind

// spoofFrom sends, over a raw session of its own (as a misbehaving app
// would, past its stack), packets on another app's flow: TCP from victim's
// local port stamped with a flow ID of its own (a UDP dial from an
// ephemeral port to the peer), and UDP on its own flow stamped with a flow
// ID it made up. Every one carries tagSpoof; the nexus must drop them all.
func spoofFrom(c appConfig, victim netip.AddrPort) (io.Closer, error) {
	s, err := control.Open(c.Socket, c.Name+"-spoof", control.OpenOptions{})
	if err != nil {
		return nil, err
	}
	// A local port of the range the nexus hands out (Session.Ephemeral).
	src := netip.AddrPortFrom(victim.Addr(), s.Ephemeral()[0])
	dst := netip.MustParseAddrPort("198.18.0.2:9192")
	fi, err := s.Register(packet.MakeKey(packet.ProtoUDP, src, dst), flow.Connected)
	if err != nil {
		return s, fmt.Errorf("register its own flow: %w", err)
	}
	var madeUp [16]byte
	copy(madeUp[:], "made-up-flow-id!")
	var tcp, udp [][]byte
	for i := range spoofPerKind {
		t := packettest.Frame{Link: packet.RawIP, Src: victim, Dst: dst, Proto: packet.ProtoTCP,
			Flags: packet.TCPAck, Payload: fmt.Appendf(nil, "%sowner #%d", tagSpoof, i)}
		u := packettest.Frame{Link: packet.RawIP, Src: src, Dst: dst, Proto: packet.ProtoUDP,
			Payload: fmt.Appendf(nil, "%sflow-id #%d", tagSpoof, i)}
		tcp, udp = append(tcp, t.Bytes()), append(udp, u.Bytes())
	}
	if err := sendApp(s.App(), fi.ID, tcp); err != nil {
		return s, err
	}
	if err := sendApp(s.App(), madeUp, udp); err != nil {
		return s, err
	}
	// Then one honest packet on its own flow: the peer's capture must see
	// it, so it was capturing when the lies came through (the nexus takes
	// a TX ring in order).
	v := packettest.Frame{Link: packet.RawIP, Src: src, Dst: dst, Proto: packet.ProtoUDP, Payload: []byte(tagValid + "after-spoofs")}
	if err := sendApp(s.App(), fi.ID, [][]byte{v.Bytes()}); err != nil {
		return s, err
	}
	// Closing the session discards what its TX ring still holds: wait
	// until the nexus took every packet off it.
	for deadline := time.Now().Add(10 * time.Second); s.App().Counters().TxPackets < appSpoofs+1; {
		if time.Now().After(deadline) {
			return s, fmt.Errorf("the nexus took %d of %d packets off the TX ring in 10s", s.App().Counters().TxPackets, appSpoofs+1)
		}
		s.App().Kick()
		s.App().Wait(10 * time.Millisecond)
	}
	return s, nil
}

// sendApp puts pkts on app's TX ring stamped with flow ID id, and kicks
// the nexus.
func sendApp(app *channel.App, id [16]byte, pkts [][]byte) error {
	bufs := make([]channel.Buf, len(pkts))
	deadline := time.Now().Add(10 * time.Second)
	for got := 0; got < len(pkts); {
		n, err := app.Alloc(bufs[got:])
		if err != nil {
			return err
		}
		got += n
		if n == 0 {
			if time.Now().After(deadline) {
				return errors.New("no TX buffer within 10s")
			}
			app.Kick()
			app.Wait(10 * time.Millisecond)
		}
	}
	for i, b := range bufs {
		b.Data = b.Data[:copy(b.Data[:cap(b.Data)], pkts[i])]
		bufs[i] = b
		m, err := app.Meta(b.Index)
		if err != nil {
			return err
		}
		copy(m[channel.TxMetaFlowIDOff:], id[:])
	}
	for sent := 0; sent < len(bufs); {
		k, err := app.Send(bufs[sent:])
		if err != nil {
			return err
		}
		sent += k
		app.Kick()
		if k == 0 {
			if time.Now().After(deadline) {
				return errors.New("TX ring full for 10s")
			}
			app.Wait(10 * time.Millisecond)
		}
	}
	return nil
}

// hog takes every packet buffer the nexus hands a raw session of its own
// and keeps them, until the nexus says its pool is at its cap (the
// channel's AllocFails): the buffers it got must fit in limit bytes.
func hog(c appConfig, limit int) (io.Closer, error) {
	s, err := control.Open(c.Socket, c.Name+"-hog", control.OpenOptions{})
	if err != nil {
		return nil, err
	}
	app := s.App()
	bufs := make([]channel.Buf, 256)
	held := 0
	for deadline := time.Now().Add(10 * time.Second); app.Counters().AllocFails == 0; {
		n, err := app.Alloc(bufs)
		if err != nil {
			return s, err
		}
		held += n
		if held*app.BufferSize() > 4*limit {
			break // far past the cap: no need to go on
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("held %d buffers and the pool never ran short in 10 s", held)
		}
		app.Kick()
		app.Wait(10 * time.Millisecond)
	}
	if got := held * app.BufferSize(); got > limit {
		return s, fmt.Errorf("held %d buffers, %d bytes, over max_pool %d", held, got, limit)
	}
	return s, nil
}
