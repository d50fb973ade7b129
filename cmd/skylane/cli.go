package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/skylane/skylane/bench"
)

const usage = `skylane: user-space networking stack infrastructure

usage:
  skylane demo                     run the nexus on the in-memory link and report
  skylane bench SCENARIO [flags]   measure a scenario against its baseline
  skylane bench list               list the scenarios
  skylane bench tcp --dev          the tcp rows on a veth pair (root): kernel client, user-space server
  skylane bench burst --dev [--driver afpacket|afxdp]
                                   the burst rows on a veth pair (root): the kernel's stack at the far end
  skylane bench http --dev         net/http on a user-space stack loaded by wrk over a veth (root)
  skylane nexus --dev IF --driver afxdp|afpacket|tun|memif --socket PATH [--socket-group GROUP] [--policy FILE]
                                   own the interface and serve apps on a control socket (root)
  skylane stats --nexus SOCKET [--json] [--watch 1s]
                                   a running nexus's counters, per app
  skylane capture --nexus SOCKET [--point P] [--app A] [--host IP] [--port N] [--reason R] [-c N] -w FILE|-
                                   what the nexus sees, as pcapng: device, apps, kernel and drops
  skylane serve --dev IF --driver afxdp|afpacket|tun --addr IP:PORT [--tls]
                                   serve HTTP(S) from a user-space stack on a nexus of its own (root)
  skylane serve --nexus SOCKET --addr [IP]:PORT [--reconnect] [--tls]
                                   serve HTTP(S) as an app of a running nexus (any user its policy allows)
`

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "bench":
		return runBench(args[1:])
	case "demo":
		return runDemo(args[1:])
	case "serve":
		return runServe(args[1:])
	case "nexus":
		return runNexus(args[1:])
	case "stats":
		return runStats(args[1:])
	case "capture":
		return runCapture(args[1:])
	case "help", "-h", "--help":
		fmt.Print(usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func runBench(args []string) error {
	help := len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help")
	if len(args) == 0 || args[0] == "list" || help {
		for _, s := range bench.Scenarios() {
			fmt.Printf("%-10s %s\n", s.Name, s.Help)
		}
		if help {
			fmt.Println("\nusage: skylane bench SCENARIO [--duration D] [--rounds N] [--rows S] [--json] [--dev] [--driver D]" +
				"\n(skylane bench SCENARIO -h lists each flag)")
		}
		if len(args) == 0 {
			return errors.New("name a scenario")
		}
		return nil
	}
	name := args[0]
	fs := flag.NewFlagSet("bench "+name, flag.ContinueOnError)
	dur := fs.Duration("duration", 3*time.Second, "time per measured point (ours and baseline each)")
	rounds := fs.Int("rounds", 3, "alternations of ours and baseline per point (median reported)")
	asJSON := fs.Bool("json", false, "print one JSON object on stdout")
	filter := fs.String("rows", "", "run only rows whose name contains this")
	dev := fs.Bool("dev", false, "tcp, burst, http: run on a veth pair the bench makes (root) instead of memif")
	driver := fs.String("driver", "", "burst --dev: the nexus's driver on the veth, afpacket (default) or afxdp")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	for _, s := range bench.Scenarios() {
		if s.Name != name {
			continue
		}
		// The first SIGINT/SIGTERM stops the run at the next round, so
		// the scenario removes what it made (namespaces, veths, XDP
		// programs); a second one kills as usual.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		go func() { <-ctx.Done(); stop() }()
		rep, err := s.Run(bench.Config{Duration: *dur, Rounds: *rounds, Progress: os.Stderr, Filter: *filter, Dev: *dev, Driver: *driver, Stop: ctx.Done()})
		stop()
		if err != nil {
			return fmt.Errorf("bench %s: %w", name, err)
		}
		if len(rep.Results) == 0 {
			return fmt.Errorf("bench %s: no row matches %q", name, *filter)
		}
		return rep.Print(os.Stdout, *asJSON)
	}
	var names []string
	for _, s := range bench.Scenarios() {
		names = append(names, s.Name)
	}
	return fmt.Errorf("unknown scenario %q (have: %s)", name, strings.Join(names, ", "))
}
