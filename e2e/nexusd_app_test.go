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
	Probes []probe
}

// probe is one request an app tries before it serves, and what the nexus
// must answer.
type probe struct {
	Name    string
	Op      string // "listen" (TCP), "listenpacket" (UDP), "dial" (TCP), "teardown" (another app's TCP listener, over a raw session)
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
	}
	return nil, fmt.Errorf("unknown probe op %q", p.Op)
}
