package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/nexus/control"
)

const statsUsage = `usage: skylane stats --nexus SOCKET [--json] [--watch 1s]

Prints a running nexus's counters: the switch's, the device link's, drops
by direction, place (switch, port, link) and reason, and each
app session with its app's name, uid and pid, flows, drops and pool. The
nexus's policy must allow you to observe (root always may).

flags:
`

func runStats(args []string) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, statsUsage)
		fs.PrintDefaults()
	}
	sock := fs.String("nexus", "", "the nexus's control socket (required)")
	asJSON := fs.Bool("json", false, "print one JSON object per sample")
	watch := fs.Duration("watch", 0, "print again every interval until SIGINT (0: once)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("stats: unexpected argument %q (flags only)", fs.Arg(0))
	}
	if *sock == "" {
		return errors.New("stats: --nexus SOCKET is required, e.g. --nexus /run/skylane/nexus.sock")
	}
	if *watch < 0 || (*watch > 0 && *watch < 10*time.Millisecond) {
		return fmt.Errorf("stats: --watch %v: want 0 or at least 10ms", *watch)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return printStats(ctx, *sock, *asJSON, *watch, os.Stdout)
}

// printStats prints one sample, or one every watch until ctx is done.
func printStats(ctx context.Context, sock string, asJSON bool, watch time.Duration, out io.Writer) error {
	tick := time.NewTicker(max(watch, time.Second))
	defer tick.Stop()
	for {
		st, err := control.FetchStats(sock)
		if err != nil {
			return err
		}
		if asJSON {
			if err := json.NewEncoder(out).Encode(st); err != nil {
				return err
			}
		} else {
			writeStats(out, st)
		}
		if watch == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func writeStats(out io.Writer, st control.Stats) {
	t := st.Totals
	fmt.Fprintf(out, "%s  nexus on %v: %d flows, %d requests refused by the policy\n",
		st.Time.Format(time.RFC3339), st.Addrs, t.ActiveFlows, st.Refused)
	fmt.Fprintf(out, "  rx %d packets, %d delivered to apps, %d to the host port, %d passed to the kernel; tx %d packets, %d bytes\n",
		t.Packets, t.Delivered, t.HostDelivered, t.KernelPassed, t.TxPackets, t.TxBytes)
	l := st.Link
	fmt.Fprintf(out, "  link: rx %d frames, %d lost; tx %d frames, %d refused (device full); %d passed to the kernel by its program\n",
		l.RxPackets, l.RxDrops, l.TxPackets, l.TxDrops, l.KernelPassed)
	if len(st.Drops) > 0 {
		// dir/place/reason: where each was lost (switch, port, link).
		fmt.Fprint(out, "  drops:")
		for _, d := range st.Drops {
			fmt.Fprintf(out, " %s/%s/%s=%d", d.Dir, d.Place, d.Reason, d.Packets)
		}
		fmt.Fprintln(out)
	}
	if st.L2 != nil {
		writeNextHops(out, st.L2)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "session\tapp\tuid\tpid\tflows\trx\trx drops\ttx\ttx drops\trefused\tpool bufs\tin use\t")
	for _, s := range st.Sessions {
		app := s.App
		if app == "" {
			app = "-"
		}
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", s.Session, app, s.UID, s.PID, s.Flows,
			s.Delivered, s.RxRingDrops, s.TxPackets, s.TxDrops, s.Refused, s.Pool.BuffersTotal, s.PoolInUse)
	}
	w.Flush()
	if st.Truncated {
		fmt.Fprintln(out, "  (more sessions than one reply holds: use --json for the same)")
	}
}

// writeNextHops prints next-hop resolution: its counters, then the next
// hops and the routes in use (most recently used first).
func writeNextHops(out io.Writer, l *flowswitch.SnapshotL2) {
	r := &l.Resolver
	fmt.Fprintf(out, "  next hops: %d routes; %d packets held, %d released, %d refused (hold full), %d expired; %d route queries, %d resolutions asked, %d no route, %d MAC changes\n",
		l.RoutesTotal, l.Switch.Held, r.PendingSent, l.Switch.HoldDrops, r.PendingExpired, r.RouteQueries, r.SolicitsSent, r.NoRoute, r.MACChanges)
	if len(l.Neighbors) > 0 {
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  neighbour\tmac\tstate\troutes\t")
		for _, n := range l.Neighbors {
			fmt.Fprintf(w, "  %v\t%s\t%s\t%d\t\n", n.Addr, dash(n.MAC), n.State, n.Routes)
		}
		w.Flush()
	}
	if len(l.Routes) > 0 {
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  route to\tvia\tmac\tstate\theld\t")
		for _, x := range l.Routes {
			via := "unreachable"
			switch {
			case !x.Known:
				via = "asking"
			case x.Via == x.Remote:
				via = "on-link"
			case x.Via.IsValid():
				via = x.Via.String()
			}
			fmt.Fprintf(w, "  %v\t%s\t%s\t%s\t%d\t\n", x.Remote, via, dash(x.MAC), dash(x.State), x.Held)
		}
		w.Flush()
		if l.RoutesTotal > len(l.Routes) {
			fmt.Fprintf(out, "  (%d more routes: the least recently used are left out)\n", l.RoutesTotal-len(l.Routes))
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
