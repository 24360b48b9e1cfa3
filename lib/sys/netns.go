package sys

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// InNetns runs fn on an OS thread that has joined the network namespace
// at path (e.g. /proc/PID/ns/net); path "" runs fn here. Sockets fn
// creates belong to that namespace, and so do processes it starts
// (os/exec forks from the calling thread). The thread is never given back
// to the Go scheduler: it exits when fn returns.
func InNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	defer ns.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with the goroutine, so no
		// other goroutine ever runs in the namespace it joined.
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// NetnsInode is the inode that names the network namespace at path.
func NetnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	return st.Ino, nil
}

// SocketNetns opens the network namespace socket fd lives in, which need
// not be its process's (SIOCGSKNS, Linux 4.9), and gives its inode.
func SocketNetns(fd int) (*os.File, uint64, error) {
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return nil, 0, fmt.Errorf("SIOCGSKNS: %w", err)
	}
	f := os.NewFile(uintptr(nsfd), "netns")
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("netns: %w", err)
	}
	return f, st.Ino, nil
}
