package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/skylane/skylane/netif/drivers"
)

// The http --dev scenario: net/http serving a small page from a user-space
// stack (a client.Stack on a nexus on the local veth), loaded by wrk from
// the peer namespace; baseline: the same net/http server on the kernel's
// stack of the same veth, loaded the same way, rounds alternating in the
// same run. wrk reports requests/s and the latency distribution; the row's
// figure is the requests/s, its p50 and p99 are in the extras.
var httpRows = []struct {
	name   string
	driver string
}{
	{"http/afxdp", drivers.AFXDP},
	{"http/afpacket", drivers.AFPacket},
}

const (
	httpBaseName = "net/http on the kernel's stack of the same veth, same wrk load"
	httpUserPort = 8080
	httpKernPort = 8081
	// httpConns and httpThreads are wrk's load: 16 keep-alive connections
	// on two threads (one per core of the 2-core machine the figures come
	// from).
	httpConns   = 16
	httpThreads = 2
	// httpBodyLen is the page's length: a small API response, so that the
	// row measures requests, not bytes.
	httpBodyLen = 128
)

// runHTTP runs the http scenario's rows; it has only a --dev form.
func runHTTP(cfg Config) (rep Report, err error) {
	rep = Report{Scenario: "http", Machine: Machine()}
	wanted := false
	for _, row := range httpRows {
		wanted = wanted || cfg.wants(row.name)
	}
	if !wanted {
		return rep, nil
	}
	if !cfg.Dev {
		return rep, errors.New("http: only the --dev form exists: run skylane bench http --dev as root")
	}
	if os.Geteuid() != 0 {
		return rep, errors.New("http --dev: needs root (network namespaces, AF_XDP, BPF): run skylane bench http --dev as root")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return rep, fmt.Errorf("http --dev: wrk loads the servers (Debian package wrk; make test installs it): %w", err)
	}
	h, err := newUDPHosts()
	if err != nil {
		return rep, fmt.Errorf("http --dev: %w", err)
	}
	defer func() { err = errors.Join(err, h.close()) }()
	if err := h.peerOffloads(true); err != nil {
		return rep, err
	}
	kln, err := h.kernelListen(httpKernPort)
	if err != nil {
		return rep, fmt.Errorf("http --dev: kernel server: %w", err)
	}
	stopKernel := serveHTTP(kln)
	defer stopKernel()
	kernURL := fmt.Sprintf("http://%s/", netip.AddrPortFrom(udpLocal, httpKernPort))
	for _, row := range httpRows {
		if !cfg.wants(row.name) {
			continue
		}
		cfg.progress("http --dev %s", row.name)
		res, err := h.httpRow(cfg, row.name, row.driver, kernURL)
		if err != nil {
			return rep, err
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

// serveHTTP serves the page on ln until the returned stop is called; stop
// waits for the server to end.
func serveHTTP(ln net.Listener) (stop func()) {
	body := []byte(strings.Repeat("x", httpBodyLen-1) + "\n")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	return func() { srv.Close(); <-done }
}

// httpRow measures one row: rounds of wrk against the user-space server
// (built afresh each round, as in the tcp --dev rows) and against the
// kernel's, alternating; the medians of the rounds are reported.
func (h *udpHosts) httpRow(cfg Config, name, driver, kernURL string) (Result, error) {
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	var ours, base wrkRounds
	for i := range rounds {
		if err := cfg.roundStart(name, i, rounds); err != nil {
			return Result{}, err
		}
		w, err := h.userHTTP(driver, d)
		if err != nil {
			return Result{}, fmt.Errorf("%s: %w", name, err)
		}
		ours.add(w)
		if w, err = h.wrk(kernURL, d); err != nil {
			return Result{}, fmt.Errorf("%s baseline: %w", name, err)
		}
		base.add(w)
	}
	res := Throughput(name, "requests/s", median(ours.rps), httpBaseName, median(base.rps))
	op99, bp99 := median(ours.p99), median(base.p99)
	res.Extra = map[string]any{
		"p50_us": round2(median(ours.p50)), "baseline_p50_us": round2(median(base.p50)),
		"p99_us": round2(op99), "baseline_p99_us": round2(bp99), "ratio_p99": round2(bp99 / op99),
		"errors": ours.errors, "baseline_errors": base.errors,
		"load": fmt.Sprintf("wrk -t%d -c%d from the peer namespace, %d-byte page, keep-alive", httpThreads, httpConns, httpBodyLen),
	}
	return res, nil
}

// userHTTP builds the user-space server on driver, loads it with wrk for d
// and closes it all again.
func (h *udpHosts) userHTTP(driver string, d time.Duration) (wrkResult, error) {
	u, err := h.openUserStack(driver, "http", 0)
	if err != nil {
		return wrkResult{}, err
	}
	defer u.close()
	ln, err := u.st.Listen("tcp4", ":"+strconv.Itoa(httpUserPort))
	if err != nil {
		return wrkResult{}, err
	}
	stop := serveHTTP(ln)
	defer stop()
	return h.wrk(fmt.Sprintf("http://%s/", netip.AddrPortFrom(udpLocal, httpUserPort)), d)
}

// wrkResult is what one wrk run reported.
type wrkResult struct {
	rps      float64
	p50, p99 float64 // µs
	errors   uint64  // socket errors and non-2xx/3xx responses
}

type wrkRounds struct {
	rps, p50, p99 []float64
	errors        uint64
}

func (r *wrkRounds) add(w wrkResult) {
	r.rps, r.p50, r.p99 = append(r.rps, w.rps), append(r.p50, w.p50), append(r.p99, w.p99)
	r.errors += w.errors
}

// wrk loads url from the peer namespace for d (whole seconds, at least
// one: wrk counts no finer).
func (h *udpHosts) wrk(url string, d time.Duration) (wrkResult, error) {
	secs := max(int((d+time.Second-1)/time.Second), 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", h.peerNS, "wrk",
		"-t"+strconv.Itoa(httpThreads), "-c"+strconv.Itoa(httpConns), "-d"+strconv.Itoa(secs)+"s",
		"--timeout", "2s", "--latency", url).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w: %s", url, err, out)
	}
	w, err := parseWrk(string(out))
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w", url, err)
	}
	return w, nil
}

var (
	wrkRPS     = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	wrkPercent = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkSockErr = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads wrk --latency's report: requests/s, the p50 and p99, and
// the errors. A report without a figure it needs is an error, never a 0.
func parseWrk(out string) (wrkResult, error) {
	var w wrkResult
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return w, fmt.Errorf("no Requests/sec in wrk's report: %q", out)
	}
	w.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, p := range wrkPercent.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(p[2], 64)
		if err != nil {
			return w, fmt.Errorf("wrk latency %q: %w", p[0], err)
		}
		v *= map[string]float64{"us": 1, "ms": 1e3, "s": 1e6}[p[3]]
		if p[1] == "50" {
			w.p50 = v
		} else {
			w.p99 = v
		}
	}
	if w.rps <= 0 || w.p50 <= 0 || w.p99 <= 0 {
		return w, fmt.Errorf("wrk's report has no requests or no latency distribution: %q", out)
	}
	if m := wrkSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseUint(s, 10, 64)
			w.errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		w.errors += n
	}
	return w, nil
}
