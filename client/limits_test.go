package client_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/nexus"
)

// A port's flow limit refuses connections visibly: with MaxPortFlows 4,
// server A holds its listener and three connections; the fourth
// connection's handshake completes (it needs no flow: the listener answers
// it), its flow is refused, the peer gets a RST, the server's Accept a
// temporary error that errors.Is finds ErrTooManyFlows in, and the refusal
// is counted by the nexus and the stack. Once a connection closes, new
// ones are served again: a limit, not a black hole.
func TestFlowLimitRefused(t *testing.T) {
	w := newWorldWith(t, nexus.Options{Switch: flowswitch.Options{MaxPortFlows: 4}})
	ln, err := w.sa.Listen("tcp4", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan net.Conn, 16)
	errs := make(chan error, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Temporary() {
					close(errs)
					return
				}
				errs <- err
				continue
			}
			conns <- c
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	ask := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		var b [1]byte
		_, err := io.ReadFull(c, b[:])
		return err
	}
	var open []net.Conn
	for i := range 3 {
		c, err := w.sb.Dial("tcp4", "198.18.0.1:80")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
		if err := ask(c); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		open = append(open, c)
	}

	// The reset may reach the dialer before its Dial returned, or after.
	c, err := w.sb.Dial("tcp4", "198.18.0.1:80")
	if err == nil {
		defer c.Close()
		err = ask(c)
	}
	if !isReset(err) {
		t.Fatalf("fourth connection: %v, want a reset", err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, client.ErrTooManyFlows) {
			t.Errorf("Accept: %v, want ErrTooManyFlows", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept returned no error for the refused connection")
	}
	if st := w.sa.Endpoint().Stats(); st.FlowLimitHits == 0 || st.FlowsRefused == 0 {
		t.Errorf("stack stats: %d limit hits, %d refused", st.FlowLimitHits, st.FlowsRefused)
	}
	st, err := w.na.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Switch.FlowLimits.PortFull == 0 {
		t.Errorf("nexus FlowLimits %+v: the refusal is not counted", st.Switch.FlowLimits)
	}

	// One connection closes: its flow goes (the reaper), and a new
	// connection is served.
	open[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := w.sb.Dial("tcp4", "198.18.0.1:80")
		if err == nil {
			err = ask(c)
			c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one closed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isReset reports whether err is a connection reset by the peer, as
// netstack's gonet reports it ("connection reset by peer").
func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "reset")
}
