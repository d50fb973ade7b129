package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/internal/shm"
)

// childEnv names the role of a re-executed skylane process in a bench.
const childEnv = "SKYLANE_BENCH_CHILD"

// RunChild runs this process as a bench child if it was started as one, and
// then exits. Call it first thing in main.
func RunChild() {
	role := os.Getenv(childEnv)
	if role == "" {
		return
	}
	if err := runChild(role); err != nil {
		fmt.Fprintln(os.Stderr, "skylane bench child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runChild(role string) error {
	if args, ok := strings.CutPrefix(role, connsClientRole); ok {
		return connsClient(args)
	}
	f := strings.Split(role, ":")
	if len(f) != 3 || f[0] != "channel-app" {
		return fmt.Errorf("unknown child role %q", role)
	}
	batch, err1 := strconv.Atoi(f[1])
	size, err2 := strconv.Atoi(f[2])
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("child role %q: %w", role, err)
	}
	conn, err := shm.UnixConn(os.NewFile(3, "ctl"))
	if err != nil {
		return err
	}
	defer conn.Close()
	a, err := channel.Receive(conn)
	if err != nil {
		return err
	}
	defer a.Close()
	var stop atomic.Bool
	err = appProducer(a, batch, size, &stop)
	if errors.Is(err, channel.ErrDefunct) {
		return nil // the nexus closed the channel: the measurement is over
	}
	return err
}

// pumpProcess is pumpChannel with the app in a child process that received
// the channel's memory over a Unix socket.
func pumpProcess(batch, size int, d time.Duration) (pumpStats, error) {
	c, err := channel.New(channel.Options{Name: "bench-proc"})
	if err != nil {
		return pumpStats{}, err
	}
	defer c.Close()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // as the child's, see startApp
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	cmd, err := startApp(ctx, c, batch, size)
	var st pumpStats
	if err == nil {
		st, err = nexusConsumer(c, batch, d, func() time.Duration { return childCPU(cmd.Process.Pid) })
	}
	c.Close()
	if cmd != nil {
		if werr := cmd.Wait(); werr != nil && err == nil {
			err = fmt.Errorf("child: %w", werr)
		}
	}
	return st, err
}

// startApp starts a child process running appProducer on c, which it
// receives over a Unix socket; it ends when c is closed (or ctx ends).
// The caller waits for the returned command, also on error when it is
// not nil.
func startApp(ctx context.Context, c *channel.Channel, batch, size int) (*exec.Cmd, error) {
	mine, theirs, err := shm.SocketPair()
	if err != nil {
		return nil, err
	}
	defer mine.Close()
	exe, err := os.Executable()
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("find own executable to re-exec: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	// One busy goroutine per process: with a second P the runtime bounces
	// it between threads on every Gosched, competing with the other process.
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=channel-app:%d:%d", childEnv, batch, size), "GOMAXPROCS=1")
	cmd.ExtraFiles = []*os.File{theirs}
	// The child must not outlive this process (a spinning orphan).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("start child: %w", err)
	}
	conn, err := shm.UnixConn(mine)
	if err == nil {
		defer conn.Close()
		err = c.Send(conn)
	}
	if err != nil {
		cmd.Process.Kill()
	}
	return cmd, err
}
