package channel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/shm"
)

// Child processes of the cross-process tests are this test binary, re-run
// with childRole set; TestMain sends them here.
const childRole = "SKYLANE_CHANNEL_TEST_CHILD"

func TestMain(m *testing.M) {
	if role := os.Getenv(childRole); role != "" {
		if err := runChild(role); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild is an app process: it receives its channel on fd 3 and plays
// role "exchange:N" (send N packets, receive N, checking content) or
// "corrupt:KIND" (misbehave, then expect to be told the channel is defunct).
func runChild(role string) error {
	conn, err := shm.UnixConn(os.NewFile(3, "ctl"))
	if err != nil {
		return err
	}
	defer conn.Close()
	a, err := Receive(conn)
	if err != nil {
		return err
	}
	defer a.Close()
	kind, arg, _ := strings.Cut(role, ":")
	switch kind {
	case "exchange":
		n, err := strconv.ParseUint(arg, 10, 64)
		if err != nil {
			return err
		}
		return childExchange(a, n)
	case "corrupt":
		return childCorrupt(a, arg)
	}
	return fmt.Errorf("unknown role %q", role)
}

// childExchange sends n packets and receives n, both sides checking every
// byte and the order. With nothing to do it sleeps in WaitFor for what it
// lacks: packets, and buffers or TX room while it has packets to send. A
// lost wake-up leaves it asleep: the 10 s wait fails the test.
func childExchange(a *App, total uint64) error {
	bufs := make([]Buf, 32)
	var sent, got uint64
	for sent < total || got < total {
		progress := false
		if sent < total {
			n, err := a.Alloc(bufs[:min(32, total-sent)])
			if err != nil {
				return err
			}
			for i := range n {
				bufs[i].Data = fill(bufs[i].Data, sent+uint64(i), 64+int((sent+uint64(i))%64))
			}
			k, err := a.Send(bufs[:n])
			if err != nil {
				return err
			}
			if k != n {
				a.Free(bufs[k:n]) // TX ring full: give them back, resend later
			}
			sent += uint64(k)
			progress = progress || k > 0
		}
		n, err := a.Receive(bufs)
		if err != nil {
			return err
		}
		for i := range n {
			if err := checkErr(bufs[i].Data, got, 64+int(got%64)); err != nil {
				return err
			}
			got++
		}
		for off := 0; off < n; {
			k, err := a.Free(bufs[off:n])
			if err != nil {
				return err
			}
			off += k
			if k == 0 {
				if err := childSleep(a, WaitFreeRoom); err != nil {
					return err
				}
			}
		}
		progress = progress || n > 0
		if !progress {
			what := WaitRX | WaitEvents
			if sent < total {
				what |= a.Short() & (WaitAlloc | WaitTxRoom)
			}
			if err := childSleep(a, what); err != nil {
				return err
			}
		}
	}
	return nil
}

// childSleep waits for what; nothing within 10 s is a lost wake-up.
func childSleep(a *App, what WaitSet) error {
	ready, err := a.WaitFor(what, 10*time.Second)
	if err == nil && ready == 0 {
		err = fmt.Errorf("no wake-up in 10s waiting for %b", what)
	}
	return err
}

// childCorrupt misbehaves in one way, then waits to be told it is defunct.
func childCorrupt(a *App, kind string) error {
	bufs := make([]Buf, 8)
	a.Wait(time.Second)
	n, _ := a.Alloc(bufs)
	switch kind {
	case "wild-index":
		bufs[0].Index = 1 << 31
		a.Send(bufs[:1])
	case "foreign-index":
		bufs[0].Index = uint32(a.desc.MaxSegments*a.desc.SegmentSize/a.desc.BufferSize - 1)
		a.Send(bufs[:1])
	case "double-free":
		a.Free(bufs[:n])
		a.Free(bufs[:n])
	case "ring-backwards":
		a.Send(bufs[:n])
		*a.ringWord(RingTX, 0) -= 100
	case "ring-lap":
		*a.ringWord(RingFree, 0) += 1 << 16
	default:
		return fmt.Errorf("unknown corruption %q", kind)
	}
	a.Kick()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if err := a.Wait(100 * time.Millisecond); errors.Is(err, ErrDefunct) {
			fmt.Println(err) // the parent checks the message
			return nil
		}
	}
	return errors.New("never told the channel is defunct")
}

func checkErr(b []byte, seq uint64, size int) error {
	var want [256]byte
	w := fill(want[:], seq, size)
	if string(b) != string(w) {
		return fmt.Errorf("packet %d: content differs (%d bytes)", seq, len(b))
	}
	return nil
}

type childProc struct {
	cmd *exec.Cmd
	ch  *Channel
	out strings.Builder
}

// startChild makes a channel and an app process for it.
func startChild(t *testing.T, ctx context.Context, name, role string) *childProc {
	t.Helper()
	c, err := New(Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	mine, theirs, err := shm.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	p := &childProc{ch: c, cmd: exec.CommandContext(ctx, os.Args[0], "-test.run=^$")}
	p.cmd.Env = append(os.Environ(), childRole+"="+role)
	p.cmd.ExtraFiles = []*os.File{theirs}
	// The child must not outlive this process (a spinning orphan).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = os.Stderr
	err = p.cmd.Start()
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	conn, err := shm.UnixConn(mine)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := c.Send(conn); err != nil {
		t.Fatal(err)
	}
	return p
}

// exchanger is the nexus side of an "exchange" child.
type exchanger struct {
	c              *Channel
	total          uint64
	sent, got      uint64
	bufs           []Buf
	done           bool
	lastProgressAt time.Time
}

// step serves the channel once; it returns whether anything moved.
func (x *exchanger) step() (bool, error) {
	c := x.c
	n, err := c.TakeTX(x.bufs)
	if err != nil {
		return false, err
	}
	for i := range n {
		if err := checkErr(x.bufs[i].Data, x.got, 64+int(x.got%64)); err != nil {
			return false, err
		}
		x.got++
	}
	c.Release(x.bufs[:n])
	moved := n > 0
	if x.sent < x.total {
		k := c.Alloc(x.bufs[:min(32, x.total-x.sent)])
		for i := range k {
			x.bufs[i].Data = fill(x.bufs[i].Data, x.sent+uint64(i), 64+int((x.sent+uint64(i))%64))
		}
		// Deliver only what fits so nothing is dropped: the test counts every packet.
		c.rx.Refresh()
		fit := min(k, c.rx.Size()-c.rx.Pending())
		if fit < k {
			c.Release(x.bufs[fit:k])
		}
		if fit > 0 {
			x.sent += uint64(c.Deliver(x.bufs[:fit]))
			moved = true
		}
	}
	if err := c.Sync(); err != nil {
		return false, err
	}
	x.done = x.got == x.total && x.sent == x.total
	return moved, nil
}

// serveUntilExit serves the child's channel until the child exits (it may
// still be handing buffers back after the last packet) and its rings are
// drained, and returns its exit error.
func serveUntilExit(ctx context.Context, p *childProc, x *exchanger) error {
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	for {
		select {
		case err := <-exited:
			// What it sent last may still be on the TX ring: the
			// memory is the nexus's and outlives the child.
			for {
				moved, serr := x.step()
				if serr != nil {
					return errors.Join(err, serr)
				}
				if !moved {
					return err
				}
			}
		default:
		}
		moved, err := x.step()
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !moved {
			p.ch.Wait(10 * time.Millisecond)
		}
	}
}

// TestAcrossProcesses: a child process gets its channel over a Unix socket
// and exchanges a million packets each way with the nexus, content checked,
// none lost.
func TestAcrossProcesses(t *testing.T) {
	const total = 1_000_000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startChild(t, ctx, "exchange", fmt.Sprintf("exchange:%d", total))
	x := &exchanger{c: p.ch, total: total, bufs: make([]Buf, 64)}
	if err := serveUntilExit(ctx, p, x); err != nil {
		t.Fatalf("after %d sent, %d received: %v", x.sent, x.got, err)
	}
	if !x.done {
		t.Fatalf("child exited after %d sent, %d received", x.sent, x.got)
	}
	cn := p.ch.Counters()
	if cn.TxPackets != total || cn.RxPackets != total || cn.RxDrops != 0 {
		t.Fatalf("counters: %+v", cn)
	}
}

// TestMisbehavingProcess: children that corrupt their rings lose their own
// channel, with a clear error, while a well-behaved child served by the
// same nexus loop keeps exchanging packets throughout.
func TestMisbehavingProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const total = 300_000
	good := startChild(t, ctx, "good", fmt.Sprintf("exchange:%d", total))
	x := &exchanger{c: good.ch, total: total, bufs: make([]Buf, 64)}
	kinds := map[string]DefunctReason{
		"wild-index":     ReasonWildBuffer,
		"foreign-index":  ReasonWildBuffer,
		"double-free":    ReasonNotOwned,
		"ring-backwards": ReasonRingCorrupt,
		"ring-lap":       ReasonRingCorrupt,
	}
	bufs := make([]Buf, 64)
	for kind, want := range kinds {
		bad := startChild(t, ctx, "bad-"+kind, "corrupt:"+kind)
		gotBefore := x.got
		for bad.ch.Err() == nil {
			if ctx.Err() != nil {
				t.Fatalf("%s: channel never defunct", kind)
			}
			if _, err := bad.ch.TakeTX(bufs); err == nil {
				bad.ch.Sync()
			}
			if _, err := x.step(); err != nil {
				t.Fatalf("good child broke while %s misbehaved: %v", kind, err)
			}
			runtime.Gosched()
		}
		var de *DefunctError
		if !errors.As(bad.ch.Err(), &de) || de.Reason != want {
			t.Fatalf("%s: got %v, want %s", kind, bad.ch.Err(), want)
		}
		if err := bad.cmd.Wait(); err != nil {
			t.Fatalf("%s child: %v", kind, err)
		}
		if !strings.Contains(bad.out.String(), "defunct") {
			t.Fatalf("%s child was told %q", kind, bad.out.String())
		}
		// The good child keeps going (when it was not already done): it
		// may be asleep, so serve it as the nexus would, sleeping in
		// Wait when nothing moved, for up to 10 s.
		for deadline := time.Now().Add(10 * time.Second); x.got == gotBefore && !x.done && time.Now().Before(deadline); {
			moved, err := x.step()
			if err != nil {
				t.Fatal(err)
			}
			if !moved {
				good.ch.Wait(10 * time.Millisecond)
			}
		}
		if x.got == gotBefore && !x.done {
			t.Fatalf("good child made no progress around %s in 10s", kind)
		}
	}
	if err := serveUntilExit(ctx, good, x); err != nil || !x.done {
		t.Fatalf("good child: %v after %d sent, %d received", err, x.sent, x.got)
	}
}
