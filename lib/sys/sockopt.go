package sys

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SocketTimeouts reads SO_RCVTIMEO and SO_SNDTIMEO in microseconds (0:
// none, the default). Every socket family has them.
func SocketTimeouts(fd int) (rcvUs, sndUs uint64, err error) {
	get := func(opt int, name string) uint64 {
		if err != nil {
			return 0
		}
		tv, e := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, opt)
		if e != nil {
			err = fmt.Errorf("getsockopt %s: %w", name, e)
			return 0
		}
		return uint64(tv.Sec)*1e6 + uint64(tv.Usec)
	}
	rcvUs = get(unix.SO_RCVTIMEO, "SO_RCVTIMEO")
	sndUs = get(unix.SO_SNDTIMEO, "SO_SNDTIMEO")
	return rcvUs, sndUs, err
}

// SetSocketTimeouts sets the timeouts SocketTimeouts read; 0 leaves the
// default (none).
func SetSocketTimeouts(fd int, rcvUs, sndUs uint64) error {
	for _, o := range []struct {
		opt  int
		name string
		us   uint64
	}{{unix.SO_RCVTIMEO, "SO_RCVTIMEO", rcvUs}, {unix.SO_SNDTIMEO, "SO_SNDTIMEO", sndUs}} {
		if o.us == 0 {
			continue
		}
		tv := unix.NsecToTimeval(int64(o.us) * 1000)
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, o.opt, &tv); err != nil {
			return fmt.Errorf("setsockopt %s: %w", o.name, err)
		}
	}
	return nil
}
