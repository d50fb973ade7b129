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

	"github.com/skylane/skylane/nexus/control"
)

const statsUsage = `usage: skylane stats --nexus SOCKET [--json] [--watch 1s]

Prints a running nexus's counters: the switch's, drops by reason, and each
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
	fmt.Fprintf(out, "  rx %d packets, %d delivered to apps, %d to the kernel; tx %d packets, %d bytes\n",
		t.Packets, t.Delivered, t.HostDelivered, t.TxPackets, t.TxBytes)
	if len(st.Drops) > 0 {
		fmt.Fprint(out, "  drops:")
		for _, d := range st.Drops {
			fmt.Fprintf(out, " %s/%s=%d", d.Dir, d.Reason, d.Packets)
		}
		fmt.Fprintln(out)
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
