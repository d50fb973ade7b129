// Package connload is a kernel client process that holds many TCP
// connections to one server: the load of e2e's TestManyConnections and of
// the conns/concurrent=100000 row of skylane bench. A test or bench binary
// re-executes itself as one (in the peer's network namespace) and drives
// it over its stdin and stdout; each process holds its share of the
// connections, under the open-file limit of a process, from its own source
// address, so that the client port range is not the limit either.
//
// The protocol, one line each way per phase: Run opens every connection
// (InFlight dials at a time) and says "open N failed M FIRST-ERROR"; on a
// line from stdin it sends a request on each, "ping I\n", expects the
// answer "pong ping I\n" and says "served N failed M ..."; when stdin
// closes it closes them, InFlight at a time, each once the server closed
// its end too (so the closes are paced by the server, as the dials were),
// says "closed N failed M ..." and returns.
package connload

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Spec is what one client process does.
type Spec struct {
	Server   netip.AddrPort
	Source   netip.Addr
	Count    int // connections to hold
	InFlight int // dials, requests and closes in flight at once
}

// String is the spec as ParseSpec reads it, for an environment variable.
func (s Spec) String() string {
	return fmt.Sprintf("%s,%s,%d,%d", s.Server, s.Source, s.Count, s.InFlight)
}

// ParseSpec reads a Spec written by Spec.String.
func ParseSpec(v string) (Spec, error) {
	var s Spec
	f := strings.Split(v, ",")
	if len(f) != 4 {
		return s, fmt.Errorf("connload: %q: want server,source,count,in-flight", v)
	}
	var e [4]error
	s.Server, e[0] = netip.ParseAddrPort(f[0])
	s.Source, e[1] = netip.ParseAddr(f[1])
	s.Count, e[2] = strconv.Atoi(f[2])
	s.InFlight, e[3] = strconv.Atoi(f[3])
	if err := errors.Join(e[:]...); err != nil {
		return s, fmt.Errorf("connload: %q: %w", v, err)
	}
	if s.Count < 1 || s.InFlight < 1 {
		return s, fmt.Errorf("connload: %q: count and in-flight must be positive", v)
	}
	return s, nil
}

// Timeout bounds each dial, request and close.
const Timeout = 60 * time.Second

// Run is the client process (see the package doc).
func Run(s Spec, in io.Reader, out io.Writer) error {
	// No keep-alive probes: idle connections would probe the server,
	// load that is not what the callers measure.
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(s.Source, 0)), Timeout: Timeout, KeepAlive: -1}
	conns := make([]net.Conn, s.Count)
	var failed atomic.Int64
	var first atomic.Value
	each := func(what string, fn func(i int, c net.Conn) error) {
		failed.Store(0)
		var next atomic.Int64
		var wg sync.WaitGroup
		for range s.InFlight {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < s.Count; i = int(next.Add(1) - 1) {
					if err := fn(i, conns[i]); err != nil {
						failed.Add(1)
						first.CompareAndSwap(nil, err.Error())
					}
				}
			}()
		}
		wg.Wait()
		fmt.Fprintf(out, "%s %d failed %d %v\n", what, s.Count-int(failed.Load()), failed.Load(), first.Load())
	}
	each("open", func(i int, _ net.Conn) (err error) {
		conns[i], err = d.Dial("tcp4", s.Server.String())
		return err
	})
	r := bufio.NewReader(in)
	if _, err := r.ReadString('\n'); err != nil {
		return closeAll(conns)
	}
	each("served", func(i int, c net.Conn) error {
		if c == nil {
			return errors.New("not open")
		}
		c.SetDeadline(time.Now().Add(Timeout))
		req := fmt.Sprintf("ping %d\n", i)
		if _, err := io.WriteString(c, req); err != nil {
			return err
		}
		got, err := bufio.NewReaderSize(c, 64).ReadString('\n')
		if err != nil {
			return err
		}
		if got != "pong "+req {
			return fmt.Errorf("answer %q to %q", got, req)
		}
		return nil
	})
	io.Copy(io.Discard, r)
	each("closed", func(_ int, c net.Conn) error {
		if c == nil {
			return errors.New("not open")
		}
		defer c.Close()
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(Timeout))
		if _, err := io.Copy(io.Discard, c); err != nil {
			return fmt.Errorf("waiting for the server's close: %w", err)
		}
		return nil
	})
	return nil
}

func closeAll(conns []net.Conn) error {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	return nil
}
