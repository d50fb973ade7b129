package main

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/internal/selfsigned"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
)

// The demo's HTTPS section: two nexuses on a memif wire at MTU 1500, a
// user-space stack on each, RFC 2544 benchmarking addresses.
const httpsMTU = 1500

var (
	httpsHostA = netip.MustParseAddr("198.18.0.1")
	httpsHostB = netip.MustParseAddr("198.18.0.2")
)

// httpsReport is what demoHTTPS shows: an HTTPS exchange between two
// user-space stacks, and how the path batched and merged it.
type httpsReport struct {
	URL        string        `json:"url"`
	Proto      string        `json:"proto"`       // e.g. HTTP/2.0
	TLSVersion string        `json:"tls_version"` // e.g. TLS 1.3
	Status     int           `json:"status"`
	Bytes      int64         `json:"bytes"`      // body bytes fetched
	DigestOK   bool          `json:"digest_ok"`  // the body's SHA-256 matched the server's
	Elapsed    time.Duration `json:"elapsed_ns"` // the large GET
	Gbps       float64       `json:"gbit_per_s"`
	IPv6OK     bool          `json:"ipv6_ok"` // the same page over IPv6 too

	// The server's endpoint: packets it put on its TX ring, how many of
	// them were netstack GSO super packets (handed down whole), and the
	// 5-tuple flows it registered for accepted connections; its nexus:
	// the super packets it cut into MTU segments right before the wire
	// (this wire carries none whole), and the segments.
	ServerTxPackets, ServerGSOPackets, ServerFlowsAuto uint64
	ServerCut, ServerSegments                          uint64
	// The client's nexus: frames read from the wire, in how many input
	// batches, and the TCP super packets it formed and the segments they
	// absorbed; and the packets its endpoint received (super packets count
	// once).
	ClientFrames, ClientBatches, ClientSuperPackets, ClientMerged, ClientRxPackets uint64
	// Flowswitch TX drops on either host: 0 for honest stacks.
	TxDrops uint64
}

// demoHTTPS serves HTTPS (net/http over crypto/tls, a self-signed
// certificate made on the spot) from a user-space stack on host A and
// fetches a body of size bytes from a stack on host B, through both
// nexuses and a memif wire at MTU 1500, then the small page over IPv6.
func demoHTTPS(size int) (httpsReport, error) {
	var rep httpsReport
	la, lb, err := memif.NewPair(memif.Options{Name: "demo", MTU: httpsMTU})
	if err != nil {
		return rep, err
	}
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	na, err := nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{httpsHostA, a6}})
	if err != nil {
		la.Close()
		return rep, err
	}
	defer na.Close()
	nb, err := nexus.New(nexus.Options{Link: lb, Addrs: []netip.Addr{httpsHostB, b6}})
	if err != nil {
		return rep, err
	}
	defer nb.Close()
	sa, err := client.New(inproc.Nexus(na), client.Options{Name: "https-server"})
	if err != nil {
		return rep, err
	}
	defer sa.Close()
	sb, err := client.New(inproc.Nexus(nb), client.Options{Name: "https-client"})
	if err != nil {
		return rep, err
	}
	defer sb.Close()

	cert, pool, err := selfsigned.New("skylane demo", time.Hour, httpsHostA, a6)
	if err != nil {
		return rep, err
	}
	body := make([]byte, size)
	if _, err := rand.Read(body); err != nil {
		return rep, err
	}
	sum := sha256.Sum256(body)
	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello over skylane\n") })
	ln, err := sa.Listen("tcp", ":443")
	if err != nil {
		return rep, err
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() { srv.Close(); <-served }()
	tr := &http.Transport{DialContext: sb.DialContext, TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: time.Minute}

	rep.URL = "https://" + httpsHostA.String() + "/big"
	start := time.Now()
	resp, err := cl.Get(rep.URL)
	if err != nil {
		return rep, fmt.Errorf("GET %s: %w", rep.URL, err)
	}
	h := sha256.New()
	rep.Bytes, err = io.Copy(h, resp.Body)
	resp.Body.Close()
	rep.Elapsed = time.Since(start)
	if err != nil {
		return rep, fmt.Errorf("GET %s: body: %w", rep.URL, err)
	}
	rep.Status, rep.Proto = resp.StatusCode, resp.Proto
	if resp.TLS != nil {
		rep.TLSVersion = tls.VersionName(resp.TLS.Version)
	}
	rep.DigestOK = string(h.Sum(nil)) == string(sum[:])
	rep.Gbps = math.Round(float64(rep.Bytes)*8/rep.Elapsed.Seconds()/1e9*100) / 100
	if resp, err := cl.Get("https://[" + a6.String() + "]/hello"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		rep.IPv6OK = resp.StatusCode == 200 && string(b) == "hello over skylane\n"
	}

	es, ec := sa.Endpoint().Stats(), sb.Endpoint().Stats()
	rep.ServerTxPackets, rep.ServerGSOPackets, rep.ServerFlowsAuto = es.TxPackets, es.TxGSO, es.FlowsAuto
	rep.ClientRxPackets = ec.RxPackets
	sta, err := na.Stats()
	if err != nil {
		return rep, err
	}
	stb, err := nb.Stats()
	if err != nil {
		return rep, err
	}
	rep.ClientFrames, rep.ClientBatches = stb.Switch.Packets, stb.Switch.Batches
	rep.ClientSuperPackets, rep.ClientMerged = stb.Switch.SuperPackets, stb.Switch.Merged
	rep.ServerCut, rep.ServerSegments = sta.Switch.TxSegmented, sta.Switch.TxSegments
	rep.TxDrops = sta.Switch.TxDrops.Total() + stb.Switch.TxDrops.Total()
	return rep, nil
}
