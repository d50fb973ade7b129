package bench

import (
	"io"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/netif/drivers"
)

// The benchmarks below explain the tcp rows (docs/profile.md): they run
// one path at a time, so that go test's -cpuprofile and -trace, and perf
// around the test binary, see only it, and report per round trip or per
// MB what the path costs in goroutine schedulings, thread sleeps, read and
// write system calls and CPU. They measure no ratio: the rows do.

// The fixed warm-ups of the benchmarks: 2000 round trips, 64 MiB.
const (
	profileWarmRPCs   = 2000
	profileWarmWrites = 256
)

// pathCounters are the process-wide counters the benchmarks difference.
type pathCounters struct {
	scheds      uint64 // goroutines put on a CPU (runtime/metrics /sched/latencies count)
	rwSyscalls  uint64 // read and write system calls (/proc/self/io syscr + syscw)
	sleeps      uint64 // voluntary context switches of our threads: a thread blocked (futex, epoll_wait, read)
	preemptions uint64 // involuntary context switches
	cpuNs       int64  // user + system CPU of all threads
}

func readPathCounters(tb testing.TB) pathCounters {
	var c pathCounters
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	for _, n := range s[0].Value.Float64Histogram().Counts {
		c.scheds += n
	}
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		if k == "syscr" || k == "syscw" {
			n, _ := strconv.ParseUint(v, 10, 64)
			c.rwSyscalls += n
		}
	}
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	c.sleeps, c.preemptions = uint64(ru.Nvcsw), uint64(ru.Nivcsw)
	c.cpuNs = ru.Utime.Nano() + ru.Stime.Nano()
	return c
}

// report reports the counters' growth since c0 per unit of work (ops of
// unit).
func (c0 pathCounters) report(b *testing.B, c1 pathCounters, ops float64, unit string) {
	// The runtime samples a goroutine's scheduling latency on one in 8 of
	// its transitions (runtime's gTrackingPeriod): 8 × the count
	// estimates the goroutines put on a CPU.
	b.ReportMetric(8*float64(c1.scheds-c0.scheds)/ops, "scheds/"+unit)
	b.ReportMetric(float64(c1.rwSyscalls-c0.rwSyscalls)/ops, "rwsyscalls/"+unit)
	b.ReportMetric(float64(c1.sleeps-c0.sleeps)/ops, "sleeps/"+unit)
	b.ReportMetric(float64(c1.preemptions-c0.preemptions)/ops, "preempts/"+unit)
	b.ReportMetric(float64(c1.cpuNs-c0.cpuNs)/1e3/ops, "cpu-µs/"+unit)
}

// benchPaths runs f on each path of the tcp rows: two user-space stacks
// over memif, kernel loopback, and, as root, a kernel client in a peer
// namespace to a user-space stack on AF_XDP and to the kernel's stack.
func benchPaths(b *testing.B, f func(b *testing.B, p *connPair)) {
	b.Run("skylane", func(b *testing.B) {
		p, err := newSkyPair(client.Options{ChecksumOffload: true}, true)
		if err != nil {
			b.Fatal(err)
		}
		defer p.close()
		f(b, &p.connPair)
	})
	b.Run("skylane-busypoll", func(b *testing.B) {
		p, err := newSkyPair(client.Options{BusyPoll: rpcBusyPoll, ChecksumOffload: true}, true)
		if err != nil {
			b.Fatal(err)
		}
		defer p.close()
		f(b, &p.connPair)
	})
	b.Run("kernel", func(b *testing.B) {
		p, err := newKernelPair()
		if err != nil {
			b.Fatal(err)
		}
		defer p.close()
		f(b, p)
	})
	if os.Geteuid() != 0 {
		return
	}
	b.Run("dev", func(b *testing.B) {
		h, err := newUDPHosts()
		if err != nil {
			b.Fatal(err)
		}
		defer h.close()
		if err := h.peerOffloads(true); err != nil {
			b.Fatal(err)
		}
		for _, v := range []struct {
			name     string
			busyPoll time.Duration
		}{{"afxdp", 0}, {"afxdp-busypoll", rpcBusyPoll}} {
			b.Run(v.name, func(b *testing.B) {
				u, err := h.openUserStack(drivers.AFXDP, "profile", v.busyPoll)
				if err != nil {
					b.Fatal(err)
				}
				defer u.close()
				p, err := h.connectUser(u)
				if err != nil {
					b.Fatal(err)
				}
				defer p.close()
				f(b, p)
			})
		}
		b.Run("kernel", func(b *testing.B) {
			p, err := h.kernelStream()
			if err != nil {
				b.Fatal(err)
			}
			defer p.close()
			f(b, p)
		})
	})
}

// BenchmarkRPC: 64-byte round trips, one per op, as the rpc rows make.
func BenchmarkRPC(b *testing.B) {
	benchPaths(b, func(b *testing.B, p *connPair) {
		var req, resp [rpcSize]byte
		roundTrips := func(n int) {
			for range n {
				if _, err := p.rpcC.Write(req[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(p.rpcC, resp[:]); err != nil {
					b.Fatal(err)
				}
			}
		}
		// A fixed warm-up, so that two runs of different b.N differ
		// only by the measured round trips (for counts taken around the
		// whole binary: perf, the execution trace).
		roundTrips(profileWarmRPCs)
		c0 := readPathCounters(b)
		b.ResetTimer()
		roundTrips(b.N)
		b.StopTimer()
		c0.report(b, readPathCounters(b), float64(b.N), "rpc")
	})
}

// BenchmarkStream: the stream rows' writes of 256 KiB, b.N of them, until
// the receiver has read them all.
func BenchmarkStream(b *testing.B) {
	benchPaths(b, func(b *testing.B, p *connPair) {
		buf := make([]byte, tcpWrite)
		send := func(n int) {
			base := p.received.Load()
			for range n {
				if _, err := p.streamTx.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			for p.received.Load()-base < int64(n)*tcpWrite {
				// The receiver runs on its own; wait for it without a
				// goroutine hand-off of our own to count.
				unix.Nanosleep(&unix.Timespec{Nsec: 20_000}, nil)
			}
		}
		send(profileWarmWrites)
		b.SetBytes(tcpWrite)
		c0 := readPathCounters(b)
		b.ResetTimer()
		send(b.N)
		b.StopTimer()
		c0.report(b, readPathCounters(b), float64(b.N)*tcpWrite/(1<<20), "MB")
	})
}
