// Package image reads and writes the crpipe image stream, version 1.
//
// The byte layout is specified in doc/stream-v1.md, which is the source of
// truth; this package follows it. A stream is a 16-byte header followed by
// self-delimiting frames (16-byte frame header, payload). Metadata payloads
// are protobuf messages of package cr.v1 (crpipe/lib/pb); page payloads are
// raw memory behind a 16-byte preamble. Every frame carries a CRC32C, and the
// stream closes with an End frame whose counts the reader checks.
//
// Memory use is bounded by the largest frame (MaxPayload), whatever the
// size of the stream.
package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"crpipe/lib/internal/crc32c"
)

// Magic opens every stream. Like PNG's, it catches text-mode mangling.
var Magic = [8]byte{0x89, 'C', 'R', 'P', '\r', '\n', 0x1a, '\n'}

// The version this package writes. Readers refuse another major version and
// accept any minor version (unknown frame types are passed through).
const (
	Major = 1
	Minor = 0
)

const (
	HeaderSize      = 16
	FrameHeaderSize = 16
	PagesPreamble   = 16 // pid u32, flags u32, addr u64
	PageSize        = 4096

	// MaxPayload caps any frame's payload; a larger length is corruption.
	MaxPayload = 64 << 20
	// MaxPagesPayload caps a page frame: the unit of streaming.
	MaxPagesPayload = PagesPreamble + 4<<20
)

// Type says what a frame's payload is.
type Type uint32

const (
	TypeInventory  Type = 1  // pb.Inventory
	TypeFreeze     Type = 2  // pb.Freeze
	TypeProcess    Type = 3  // pb.Process
	TypeThreadCore Type = 16 // pb.ThreadCore
	TypeTaskState  Type = 32 // pb.TaskState
	TypeMm         Type = 48 // pb.Mm
	TypePages      Type = 49 // raw: preamble + page contents
	TypeFiles      Type = 64 // pb.Files
	TypeFileDesc   Type = 65 // pb.FileDesc
	TypeFileData   Type = 66 // pb.FileData
	TypeGhostFile  Type = 67 // pb.GhostFile
	TypeEnd        Type = 0xffffffff
)

// Task state (issue 4): 17-31 are written by cr-seize, 33-47 by cr-parasite.
const (
	TypeThreadState   Type = 17 // pb.ThreadState
	TypeProcessState  Type = 18 // pb.ProcessState
	TypeThreadInside  Type = 33 // pb.ThreadInside
	TypeProcessInside Type = 34 // pb.ProcessInside
)

// TCP (issue 6): 80-95 are written by cr-tcp.
const (
	TypeTcpLock   Type = 80 // pb.TcpLock
	TypeTcpSocket Type = 81 // pb.TcpSocket
	TypeTcpQueue  Type = 82 // pb.TcpQueue
)

var typeNames = map[Type]string{
	TypeInventory:  "inventory",
	TypeFreeze:     "freeze",
	TypeProcess:    "process",
	TypeThreadCore: "thread-core",
	TypeTaskState:  "task-state",
	TypeMm:         "mm",
	TypePages:      "pages",
	TypeFiles:      "files",
	TypeFileDesc:   "file-desc",
	TypeFileData:   "file-data",
	TypeGhostFile:  "ghost-file",
	TypeEnd:        "end",

	TypeThreadState:   "thread-state",
	TypeProcessState:  "process-state",
	TypeThreadInside:  "thread-inside",
	TypeProcessInside: "process-inside",

	TypeTcpLock:   "tcp-lock",
	TypeTcpSocket: "tcp-socket",
	TypeTcpQueue:  "tcp-queue",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type-%d", uint32(t))
}

// TypeByName is the inverse of Type.String, for crit encode.
func TypeByName(name string) (Type, bool) {
	for t, n := range typeNames {
		if n == name {
			return t, true
		}
	}
	// Strictly the inverse: no sign, no trailing text, no overflow.
	num, ok := strings.CutPrefix(name, "type-")
	if !ok || num == "" || num[0] < '0' || num[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, false
	}
	return Type(n), true
}

// Sentinel errors; decoders wrap them with the frame number and offset.
var (
	ErrMagic     = errors.New("not a crpipe image stream (bad magic)")
	ErrVersion   = errors.New("unsupported stream version")
	ErrTruncated = errors.New("stream truncated")
	ErrChecksum  = errors.New("checksum mismatch")
	ErrTooLarge  = errors.New("frame length exceeds limit")
	ErrCorrupt   = errors.New("stream corrupt")
	ErrTrailing  = errors.New("data after end frame")
)

// frameCRC covers type, flags and length (the first 12 header bytes) and the payload.
func frameCRC(hdr []byte, payloads ...[]byte) uint32 {
	c := crc32c.Update(0, hdr[:12])
	for _, p := range payloads {
		c = crc32c.Update(c, p)
	}
	return c
}

// Frame is one decoded frame. Payload is valid until the next Reader.Next.
type Frame struct {
	Type    Type
	Flags   uint32
	Payload []byte
	Index   uint64 // 0 for the first frame
	Offset  int64  // offset of the frame header in the (uncompressed) stream

	// sum is the checksum the frame arrived with, valid for the Type, Flags
	// and Payload in sumOf: Writer.Pass writes it instead of recomputing.
	sum   uint32
	sumOf sumKey
	// A deferred pages frame (Reader.DeferPages): Payload holds only the
	// preamble, and the contents, deferred bytes, are still in rd's input.
	rd       *decoder
	deferred int64
	head     uint32 // CRC-32C of the header's first 12 bytes and the preamble
	// Contents left in the input file (Reader.PagesInFile).
	file *fileContents
}

type sumKey struct {
	t     Type
	flags uint32
	p     *byte
	n     int
	ok    bool
}

func (f *Frame) setSum(sum uint32) {
	f.sum = sum
	f.sumOf = sumKey{f.Type, f.Flags, unsafe.SliceData(f.Payload), len(f.Payload), true}
}

// knownSum is the frame's checksum as read, if the frame is still what was read.
func (f *Frame) knownSum() (uint32, bool) {
	k := f.sumOf
	return f.sum, k.ok && k.t == f.Type && k.flags == f.Flags && k.p == unsafe.SliceData(f.Payload) && k.n == len(f.Payload)
}

// Deferred reports whether the frame's page contents were left in the input
// (Reader.DeferPages): Payload then holds only the preamble, and the frame
// can only be passed on (Writer.Pass) or skipped.
func (f *Frame) Deferred() bool { return f.deferred > 0 }

// Header is the stream header after the magic.
type Header struct {
	Major uint16
	Minor uint16
	Flags uint32
}

// PagesHeader is the preamble of a TypePages payload.
type PagesHeader struct {
	Pid   uint32
	Flags uint32
	Addr  uint64
}

// Pages splits a TypePages payload into its preamble and page contents.
func (f *Frame) Pages() (PagesHeader, []byte, error) {
	if f.Type != TypePages {
		return PagesHeader{}, nil, fmt.Errorf("frame %d at offset %d: %s is not a pages frame: %w", f.Index, f.Offset, f.Type, ErrCorrupt)
	}
	if f.deferred > 0 {
		return PagesHeader{}, nil, fmt.Errorf("frame %d at offset %d: the contents of this pages frame were passed on unread (Reader.DeferPages)", f.Index, f.Offset)
	}
	if f.file != nil {
		return PagesHeader{}, nil, fmt.Errorf("frame %d at offset %d: the contents of this pages frame are in the file (Frame.ReadPieces)", f.Index, f.Offset)
	}
	p := f.Payload
	if len(p) < PagesPreamble || (len(p)-PagesPreamble)%PageSize != 0 {
		return PagesHeader{}, nil, fmt.Errorf("frame %d at offset %d: pages payload of %d bytes is not a preamble plus whole pages: %w", f.Index, f.Offset, len(p), ErrCorrupt)
	}
	h, err := f.PagesHeader()
	if err != nil {
		return h, nil, err
	}
	return h, p[PagesPreamble:], nil
}

// PagesHeader reads the preamble of a TypePages payload: also of a frame
// whose contents are elsewhere (Deferred, InFile).
func (f *Frame) PagesHeader() (PagesHeader, error) {
	if f.Type != TypePages {
		return PagesHeader{}, fmt.Errorf("frame %d at offset %d: %s is not a pages frame: %w", f.Index, f.Offset, f.Type, ErrCorrupt)
	}
	p := f.Payload
	if len(p) < PagesPreamble {
		return PagesHeader{}, fmt.Errorf("frame %d at offset %d: pages payload of %d bytes is not a preamble plus whole pages: %w", f.Index, f.Offset, len(p), ErrCorrupt)
	}
	h := PagesHeader{
		Pid:   binary.LittleEndian.Uint32(p[0:]),
		Flags: binary.LittleEndian.Uint32(p[4:]),
		Addr:  binary.LittleEndian.Uint64(p[8:]),
	}
	if h.Addr%PageSize != 0 {
		return h, fmt.Errorf("frame %d at offset %d: page address %#x not page aligned: %w", f.Index, f.Offset, h.Addr, ErrCorrupt)
	}
	return h, nil
}

func putPagesPreamble(b []byte, h PagesHeader) {
	binary.LittleEndian.PutUint32(b[0:], h.Pid)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint64(b[8:], h.Addr)
}
