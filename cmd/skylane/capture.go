package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/capture/pcapng"
	"github.com/skylane/skylane/control"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/packet"
)

const captureUsage = `usage: skylane capture --nexus SOCKET [filters] [-c N] [--snaplen N] [--duration D] -w FILE|-

Captures what a running nexus sees, as pcapng: frames read from the device
(device-rx) and handed to it (device-tx), delivered to an app (app-rx) and
sent by one (app-tx), to and from the kernel's stack (kernel-rx,
kernel-tx), and dropped (drop-rx, drop-tx), each point its own pcapng
interface; each packet's comment names its app and, for a drop, the drop
counter's reason. -w - streams to stdout:

  skylane capture --nexus /run/skylane/nexus.sock -w - | tshark -r - -V

The nexus's policy must allow you to observe (root always may); observe =
"own" captures your own apps' ports only. The capture never slows the
nexus: frames it cannot keep up with are dropped and counted (on stderr at
the end).

flags:
`

func runCapture(args []string) error {
	fs := flag.NewFlagSet("capture", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, captureUsage)
		fs.PrintDefaults()
	}
	sock := fs.String("nexus", "", "the nexus's control socket (required)")
	out := fs.String("w", "", "write pcapng to FILE, or - for stdout (required)")
	count := fs.Int("c", 0, "stop after N frames (0: no limit)")
	snaplen := fs.Int("snaplen", 0, fmt.Sprintf("bytes kept of each frame (0: %d)", capture.DefaultSnaplen))
	dur := fs.Duration("duration", 0, "stop after this long (0: at SIGINT)")
	slots := fs.Int("ring", 0, fmt.Sprintf("frames the nexus's capture ring holds (0: %d)", capture.DefaultSlots))
	points := fs.String("point", "", "capture points, comma-separated: device-rx,device-tx,app-rx,app-tx,kernel-rx,kernel-tx,drop-rx,drop-tx; or device, app, kernel, drop (default all)")
	apps := fs.String("app", "", `apps, comma-separated ("-": frames of no app: device, kernel, receive drops)`)
	proto := fs.String("proto", "", "IP protocol: tcp, udp, icmp, icmpv6 or a number")
	host := fs.String("host", "", "an address either end must have")
	port := fs.Uint("port", 0, "a TCP or UDP port either end must have")
	reasons := fs.String("reason", "", "drop reasons, comma-separated (as skylane stats names them): drops with these only")
	quiet := fs.Bool("q", false, "no progress on stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("capture: unexpected argument %q (flags only)", fs.Arg(0))
	}
	if *sock == "" || *out == "" {
		return errors.New("capture: --nexus SOCKET and -w FILE|- are required, e.g. --nexus /run/skylane/nexus.sock -w out.pcapng")
	}
	if *count < 0 || *dur < 0 || *port > 65535 {
		return errors.New("capture: -c, --duration and --port take non-negative values (port at most 65535)")
	}
	req := control.CaptureRequest{Points: list(*points), Apps: list(*apps), Reasons: list(*reasons),
		Port: uint16(*port), Snaplen: *snaplen, Slots: *slots}
	if _, err := capture.ParsePoints(*points); err != nil {
		return err
	}
	var err error
	if req.Proto, err = parseProto(*proto); err != nil {
		return err
	}
	if *host != "" {
		if req.Host, err = netip.ParseAddr(*host); err != nil {
			return fmt.Errorf("capture: --host %q: %w", *host, err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	var w io.Writer = os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return fmt.Errorf("capture: %w", err)
		}
		defer f.Close()
		w = f
	}
	progress := io.Writer(os.Stderr)
	if *quiet {
		progress = io.Discard
	}
	return captureTo(ctx, *sock, req, *count, w, progress)
}

// list splits a comma-separated flag value; "" is none.
func list(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

func parseProto(s string) (uint8, error) {
	switch strings.ToLower(s) {
	case "":
		return 0, nil
	case "tcp":
		return packet.ProtoTCP, nil
	case "udp":
		return packet.ProtoUDP, nil
	case "icmp":
		return packet.ProtoICMP, nil
	case "icmpv6":
		return packet.ProtoICMPv6, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("capture: --proto %q: want tcp, udp, icmp, icmpv6 or 0..255", s)
	}
	return uint8(n), nil
}

// captureTo streams a capture into w as pcapng until ctx is done, count
// frames (0: no limit) were written, or the nexus ends it; it writes the
// start and a summary to progress.
func captureTo(ctx context.Context, sock string, req control.CaptureRequest, count int, w io.Writer, progress io.Writer) error {
	cs, err := server.StartCapture(sock, req)
	if err != nil {
		return err
	}
	defer cs.Close()
	context.AfterFunc(ctx, func() { cs.Close() }) // ends a Next waiting
	lt := packet.LinkType(cs.Reply.LinkType)
	pw, err := pcapng.NewWriter(w, lt, cs.Reply.Snaplen) // buffered: flushed after each batch
	if err != nil {
		return err
	}
	what := "every app"
	if len(cs.Reply.Apps) > 0 {
		what = "your apps " + strings.Join(cs.Reply.Apps, ", ")
	}
	fmt.Fprintf(progress, "skylane capture: capturing on %s (%s, snaplen %d)\n", sock, what, cs.Reply.Snaplen)
	var (
		written int
		last    capture.BatchHeader
		werr    error
	)
	write := func(r *capture.Record) {
		if werr != nil || count > 0 && written >= count {
			return
		}
		if werr = pw.Write(r); werr == nil {
			written++
		}
	}
	for werr == nil && (count == 0 || written < count) && ctx.Err() == nil {
		h, err := cs.Next(write)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			werr = err
			break
		}
		last = h
		if err := pw.Flush(); err != nil && werr == nil {
			werr = fmt.Errorf("capture: write: %w", err)
		}
	}
	behind := ""
	if last.Drops > 0 {
		behind = " (this reader fell behind: a larger --ring or a narrower filter helps)"
	}
	fmt.Fprintf(progress, "skylane capture: %d frames written; the nexus matched %d, its capture ring dropped %d%s\n",
		written, last.Matched, last.Drops, behind)
	return werr
}
