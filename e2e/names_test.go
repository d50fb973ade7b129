package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/nexus/inproc"
)

// dnsZone is what the peer's nameserver answers: A and AAAA records by
// name; every other name is NXDOMAIN.
type dnsZone map[string][]netip.Addr

// serveDNS answers queries on pc (a kernel UDP socket in the peer
// namespace) from zone until pc closes; queries counts them, lowPort
// keeps the lowest source port they came from.
func serveDNS(pc net.PacketConn, zone dnsZone, queries, lowPort *atomic.Int64) {
	buf := make([]byte, 1500)
	for {
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var q layers.DNS
		if err := q.DecodeFromBytes(buf[:k], gopacket.NilDecodeFeedback); err != nil || q.QR || len(q.Questions) != 1 {
			continue
		}
		queries.Add(1)
		if p := int64(from.(*net.UDPAddr).Port); p < lowPort.Load() {
			lowPort.Store(p) // one reader: no lost update
		}
		qu := q.Questions[0]
		rep := layers.DNS{ID: q.ID, QR: true, OpCode: q.OpCode, AA: true, RD: q.RD, Questions: q.Questions, ResponseCode: layers.DNSResponseCodeNXDomain}
		if as, ok := zone[strings.ToLower(strings.TrimSuffix(string(qu.Name), "."))]; ok {
			rep.ResponseCode = layers.DNSResponseCodeNoErr
			for _, a := range as {
				rr := layers.DNSResourceRecord{Name: qu.Name, Class: layers.DNSClassIN, TTL: 60, IP: a.AsSlice()}
				switch {
				case a.Is4() && qu.Type == layers.DNSTypeA:
					rr.Type = layers.DNSTypeA
				case a.Is6() && qu.Type == layers.DNSTypeAAAA:
					rr.Type = layers.DNSTypeAAAA
				default:
					continue
				}
				rep.Answers = append(rep.Answers, rr)
			}
		}
		sb := gopacket.NewSerializeBuffer()
		if err := rep.SerializeTo(sb, gopacket.SerializeOptions{FixLengths: true}); err != nil {
			continue
		}
		pc.WriteTo(sb.Bytes(), from)
	}
}

// TestNames: a user-space client dials host names: resolved by a
// nameserver in the peer namespace (the resolv.conf the test writes, its
// queries over the user-space stack), or by the test's hosts file first,
// and fetches from the kernel HTTP server they name, over IPv4 and IPv6;
// Stack.Resolver answers the same; an unknown name fails as not found.
func TestNames(t *testing.T) {
	for _, d := range allDrivers {
		t.Run(d, func(t *testing.T) {
			w := newWorld(t, d)
			zone := dnsZone{
				"web.skylane.test":  {w.peer4, w.peer6},
				"web4.skylane.test": {w.peer4},
				"web6.skylane.test": {w.peer6},
			}
			var pc net.PacketConn
			var kln net.Listener
			err := w.peer.Do(func() (err error) {
				if pc, err = net.ListenPacket("udp", net.JoinHostPort(w.peer4.String(), "53")); err != nil {
					return err
				}
				kln, err = net.Listen("tcp", fmt.Sprintf(":%d", peerPort))
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			var queries, lowPort atomic.Int64
			lowPort.Store(1 << 16)
			go serveDNS(pc, zone, &queries, &lowPort)
			serveHTTP(t, kln, "kernel peer")

			dir := t.TempDir()
			rc, hosts := filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "hosts")
			if err := os.WriteFile(rc, []byte("# the test's nameserver, in the peer namespace\nnameserver "+w.peer4.String()+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(hosts, []byte(w.peer4.String()+" hosted.skylane.test\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			st, err := client.New(inproc.Nexus(w.nx), client.Options{Name: "names", ResolvConf: rc, Hosts: hosts, TimeWait: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			hc := &http.Client{Transport: &http.Transport{DialContext: st.DialContext}, Timeout: opTimeout}
			defer hc.CloseIdleConnections()

			get := func(host string) (string, error) {
				resp, err := hc.Get(fmt.Sprintf("http://%s/", net.JoinHostPort(host, fmt.Sprint(peerPort))))
				if err != nil {
					return "", err
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				return string(b), err
			}
			for _, host := range []string{"web.skylane.test", "web4.skylane.test", "web6.skylane.test", "WEB6.skylane.test."} {
				out, err := get(host)
				if err != nil || !strings.HasPrefix(out, "kernel peer") {
					t.Errorf("GET %s: %q, %v", host, out, err)
				}
			}
			if queries.Load() == 0 {
				t.Errorf("the peer's nameserver got no query")
			}
			// The queries left through the user-space stack: from the
			// ports the nexus hands its apps, above the kernel's range.
			if eph := w.nx.Ephemeral(); eph[0] != 0 && lowPort.Load() < int64(eph[0]) {
				t.Errorf("a query came from port %d, outside the apps' range %d-%d", lowPort.Load(), eph[0], eph[1])
			}
			before := queries.Load()
			if out, err := get("hosted.skylane.test"); err != nil || !strings.HasPrefix(out, "kernel peer") {
				t.Errorf("GET hosted.skylane.test (hosts file): %q, %v", out, err)
			}
			if n := queries.Load() - before; n != 0 {
				t.Errorf("a name of the hosts file cost %d queries", n)
			}

			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			as, err := st.Resolver().LookupNetIP(ctx, "ip", "web.skylane.test")
			if err != nil || len(as) != 2 {
				t.Errorf("Resolver().LookupNetIP(web.skylane.test): %v, %v; want %v and %v", as, err, w.peer4, w.peer6)
			}
			_, err = st.DialContext(ctx, "tcp", "nowhere.skylane.test:80")
			var de *net.DNSError
			if !errors.As(err, &de) || !de.IsNotFound {
				t.Errorf("dial of an unknown name: %v, want a DNS not-found error", err)
			}
		})
	}
}
