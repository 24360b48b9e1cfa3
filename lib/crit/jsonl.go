package crit

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	_ "crpipe/lib/pb/protomsg" // the records as protobuf messages: reflecting
)

// The JSON lines format (crit decode writes it, crit encode reads it):
//
//	{"header":{"major":1,"minor":0,"flags":0}}                  first line; "lz4":true when the input was lz4
//	{"type":"process","flags":0,"msg":{...}}                    metadata: msg is protojson (proto field names)
//	{"type":"process","flags":0,"msg":{...},"raw":"<base64>"}   when msg alone would not give back the exact bytes
//	{"type":"process","flags":0,"raw":"<base64>","error":"..."} when the payload is not a valid message
//	{"type":"type-99","flags":0,"raw":"<base64>"}               unknown types
//	{"type":"pages","flags":0,"pid":1,"addr":"0x1000","data":"<base64>"}   ("page_flags" when not 0)
//	{"type":"end","flags":0,"msg":{"frames":"9",...}}           last line; encode recomputes the End frame
//
// When a line has raw, encode writes raw; msg is then only for reading,
// and encode refuses a line whose msg was edited but whose raw was kept.

type headerJSON struct {
	Major uint16 `json:"major"`
	Minor uint16 `json:"minor"`
	Flags uint32 `json:"flags"`
	LZ4   bool   `json:"lz4,omitempty"`
}

type headerLine struct {
	Header headerJSON `json:"header"`
}

type msgLine struct {
	Type  string          `json:"type"`
	Flags uint32          `json:"flags"`
	Msg   json.RawMessage `json:"msg,omitempty"`
	Raw   []byte          `json:"raw,omitempty"`
	Error string          `json:"error,omitempty"`
}

type rawLine struct {
	Type  string `json:"type"`
	Flags uint32 `json:"flags"`
	Raw   []byte `json:"raw"`
}

type pagesLine struct {
	Type      string `json:"type"`
	Flags     uint32 `json:"flags"`
	Pid       uint32 `json:"pid"`
	PageFlags uint32 `json:"page_flags,omitempty"`
	Addr      string `json:"addr"`
	Data      []byte `json:"data"`
}

var (
	jsonOut = protojson.MarshalOptions{UseProtoNames: true}
	jsonIn  = protojson.UnmarshalOptions{}
	binOut  = proto.MarshalOptions{Deterministic: true}
)

// reflecting returns an empty record of a metadata frame type as a
// protobuf message (lib/pb/protomsg), for protojson; nil for pages and
// unknown types.
func reflecting(t image.Type) proto.Message {
	m := newMessage(t)
	if m == nil {
		return nil
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(m.MessageName()))
	if err != nil {
		panic(fmt.Sprintf("%s is not in lib/pb/protomsg: %v", m.MessageName(), err)) // generated together
	}
	return mt.New().Interface()
}

// msgJSON renders a payload as protojson. exact says whether encode, given
// only that JSON, writes back the same bytes.
func msgJSON(t image.Type, payload []byte) (js []byte, exact bool, err error) {
	m := reflecting(t)
	if err := proto.Unmarshal(payload, m); err != nil {
		return nil, false, err
	}
	js, err = jsonOut.Marshal(m)
	if err != nil {
		return nil, false, err
	}
	// protojson varies its spacing on purpose; lines should not.
	var c bytes.Buffer
	if err := json.Compact(&c, js); err != nil {
		return nil, false, err
	}
	back, err := msgFromJSON(t, c.Bytes())
	if err != nil {
		return c.Bytes(), false, nil
	}
	return c.Bytes(), bytes.Equal(back, payload), nil
}

// msgFromJSON is what encode does with msg.
func msgFromJSON(t image.Type, js []byte) ([]byte, error) {
	m := reflecting(t)
	if err := jsonIn.Unmarshal(js, m); err != nil {
		return nil, err
	}
	return binOut.Marshal(m)
}

// Decode writes the stream read from in as JSON lines. On damage it writes
// the frames before it, then returns the error: the output then has no
// end line, and Encode refuses it.
func Decode(out io.Writer, in io.Reader) error {
	r, err := image.NewReader(in)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(out, 64<<10)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	err = enc.Encode(headerLine{headerJSON{Major: r.Major, Minor: r.Minor, Flags: r.HdrFlags, LZ4: r.Compressed}})
	for err == nil {
		var f *image.Frame
		f, err = r.Next()
		if err != nil {
			break
		}
		err = enc.Encode(frameLine(f))
	}
	if ferr := w.Flush(); err == io.EOF {
		err = ferr
	}
	return err
}

func frameLine(f *image.Frame) any {
	name := f.Type.String()
	if f.Type == image.TypePages {
		h, data, _ := f.Pages() // checked by the reader
		return pagesLine{Type: name, Flags: f.Flags, Pid: h.Pid, PageFlags: h.Flags, Addr: fmt.Sprintf("%#x", h.Addr), Data: data}
	}
	if newMessage(f.Type) == nil {
		raw := f.Payload
		if raw == nil {
			raw = []byte{} // "raw":"", not null
		}
		return rawLine{Type: name, Flags: f.Flags, Raw: raw}
	}
	l := msgLine{Type: name, Flags: f.Flags}
	js, exact, err := msgJSON(f.Type, f.Payload)
	if err != nil {
		l.Error = err.Error()
	}
	l.Msg = js
	if !exact {
		l.Raw = f.Payload // never empty: an empty payload is an exact {}
	}
	return l
}

// EncodeOptions tune Encode.
type EncodeOptions struct {
	// Compress writes lz4 even if the header line does not ask for it.
	Compress bool
	// Warn receives notes that do not stop the encoding (nil: discarded).
	Warn func(string)
}

// maxLine caps one JSON line: a 64 MiB payload as base64 in raw and again
// inside msg, with room to spare.
const maxLine = 256 << 20

// inLine is any line of the format; which fields may appear depends on type.
type inLine struct {
	Header    *headerJSON     `json:"header"`
	Type      *string         `json:"type"`
	Flags     uint32          `json:"flags"`
	Msg       json.RawMessage `json:"msg"`
	Raw       *[]byte         `json:"raw"`
	Error     string          `json:"error"` // written by decode for the reader; ignored
	Pid       *uint32         `json:"pid"`
	PageFlags uint32          `json:"page_flags"`
	Addr      *string         `json:"addr"`
	Data      *[]byte         `json:"data"`
}

// Encode reads JSON lines from in and writes the stream to out. The End
// frame is computed by the writer; the input must nevertheless end with its
// end line, so that the JSON of a failed decode never becomes a stream that
// looks whole.
func Encode(out io.Writer, in io.Reader, opt EncodeOptions) error {
	if opt.Warn == nil {
		opt.Warn = func(string) {}
	}
	br := bufio.NewReaderSize(in, 64<<10)
	var w *image.Writer
	var end *pb.End
	n := 0
	var buf []byte
	for {
		line, err := readLine(br, &buf)
		if err == io.EOF {
			break
		}
		n++
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var l inLine
		if err := strictUnmarshal(line, &l); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if end != nil {
			return fmt.Errorf("line %d: a line after the end line", n)
		}
		if w == nil {
			if l.Header == nil || l.Type != nil {
				return fmt.Errorf("line %d: the first line must be the header line, {\"header\":{\"major\":1,\"minor\":0,\"flags\":0}}", n)
			}
			h := image.Header{Major: l.Header.Major, Minor: l.Header.Minor, Flags: l.Header.Flags}
			if w, err = image.NewWriter(out, image.WriterOptions{Compress: opt.Compress || l.Header.LZ4, Header: &h}); err != nil {
				return fmt.Errorf("line %d: %w", n, err)
			}
			continue
		}
		if l.Header != nil {
			return fmt.Errorf("line %d: a second header line", n)
		}
		if end, err = encodeFrame(w, &l); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
	}
	if w == nil {
		return errors.New("no header line: the input is empty")
	}
	if end == nil {
		return fmt.Errorf("the input ends after line %d without an end line: it is incomplete (did crit decode fail?); no End frame written", n)
	}
	c := w.Counts()
	if end.Frames != c.Frames || end.PageFrames != c.PageFrames || end.PageBytes != c.PageBytes || !end.Complete {
		opt.Warn(fmt.Sprintf("End frame recomputed: %d frames, %d page frames, %d page bytes (the end line said %d, %d, %d, complete %v)",
			c.Frames, c.PageFrames, c.PageBytes, end.Frames, end.PageFrames, end.PageBytes, end.Complete))
	}
	return w.Close()
}

// readLine returns one line without its newline, refusing lines over
// maxLine. The line is in *buf, reused by the next call.
func readLine(br *bufio.Reader, buf *[]byte) ([]byte, error) {
	line := (*buf)[:0]
	defer func() { *buf = line[:0] }()
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > maxLine {
			return nil, fmt.Errorf("line longer than %d bytes", maxLine)
		}
		line = append(line, chunk...)
		switch err {
		case nil:
			return line[:len(line)-1], nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			if len(line) == 0 {
				return nil, io.EOF
			}
			return line, nil
		default:
			return nil, err
		}
	}
}

// skipValue accepts any JSON value without copying it.
type skipValue struct{}

func (*skipValue) UnmarshalJSON([]byte) error { return nil }

var (
	lineKeys     = map[string]bool{}
	lineKeysOnce sync.Once
)

// strictUnmarshal decodes a line into an inLine, refusing unknown fields (a
// typo must not be dropped silently) and anything after the object.
// (json.Decoder's DisallowUnknownFields would copy each multi-megabyte
// pages line several times over while growing its buffer.)
func strictUnmarshal(line []byte, v *inLine) error {
	lineKeysOnce.Do(func() {
		t := reflect.TypeOf(inLine{})
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			lineKeys[name] = true
		}
	})
	var keys map[string]skipValue
	if err := json.Unmarshal(line, &keys); err != nil {
		return fmt.Errorf("not a JSON line of crit decode: %v", err)
	}
	for k := range keys {
		if !lineKeys[k] {
			return fmt.Errorf("not a JSON line of crit decode: unknown field %q", k)
		}
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("not a JSON line of crit decode: %v", err)
	}
	return nil
}

// encodeFrame writes one frame line; for the end line it returns its End
// record instead of writing it.
func encodeFrame(w *image.Writer, l *inLine) (*pb.End, error) {
	if l.Type == nil {
		return nil, errors.New(`a frame line needs "type"`)
	}
	t, ok := image.TypeByName(*l.Type)
	if !ok {
		return nil, fmt.Errorf("unknown type name %q (known names, or type-N for any number N)", *l.Type)
	}
	pageFields := l.Pid != nil || l.Addr != nil || l.Data != nil || l.PageFlags != 0
	if t == image.TypePages {
		if l.Msg != nil || l.Raw != nil {
			return nil, errors.New(`a pages line has pid, addr and data, not msg or raw`)
		}
		if l.Pid == nil || l.Addr == nil || l.Data == nil {
			return nil, errors.New(`a pages line needs "pid", "addr" and "data"`)
		}
		addr, err := strconv.ParseUint(*l.Addr, 0, 64)
		if err != nil {
			return nil, fmt.Errorf("pages addr %q: not a number", *l.Addr)
		}
		data := *l.Data
		if addr%image.PageSize != 0 || len(data)%image.PageSize != 0 {
			return nil, fmt.Errorf("pages at %#x: %d bytes is not whole pages at a page-aligned address", addr, len(data))
		}
		if len(data) > image.MaxPagesPayload-image.PagesPreamble {
			return nil, fmt.Errorf("pages at %#x: %d bytes is more than a frame holds (%d): %w", addr, len(data), image.MaxPagesPayload-image.PagesPreamble, image.ErrTooLarge)
		}
		if l.Flags == 0 {
			return nil, w.WritePages(image.PagesHeader{Pid: *l.Pid, Flags: l.PageFlags, Addr: addr}, data)
		}
		payload := make([]byte, image.PagesPreamble, image.PagesPreamble+len(data))
		binary.LittleEndian.PutUint32(payload[0:], *l.Pid)
		binary.LittleEndian.PutUint32(payload[4:], l.PageFlags)
		binary.LittleEndian.PutUint64(payload[8:], addr)
		return nil, w.WriteFrame(t, l.Flags, append(payload, data...))
	}
	if pageFields {
		return nil, fmt.Errorf("pid, addr, data and page_flags belong to pages lines, not %s", t)
	}
	payload, err := payloadOf(t, l)
	if err != nil {
		return nil, err
	}
	if t == image.TypeEnd {
		var end pb.End
		if err := pb.Unmarshal(payload, &end); err != nil {
			return nil, fmt.Errorf("end: %v", err)
		}
		return &end, nil
	}
	return nil, w.WriteFrame(t, l.Flags, payload)
}

// payloadOf returns the bytes a metadata or unknown-type line stands for.
func payloadOf(t image.Type, l *inLine) ([]byte, error) {
	known := newMessage(t) != nil
	if !known && l.Msg != nil {
		return nil, fmt.Errorf("%s is not a type this crit knows: it takes raw, not msg", t)
	}
	if l.Raw != nil {
		raw := *l.Raw
		if l.Msg != nil {
			if err := sameMessage(t, raw, l.Msg); err != nil {
				return nil, err
			}
		}
		return raw, nil
	}
	if !known {
		return nil, fmt.Errorf(`a %s line needs "raw"`, t)
	}
	if l.Msg == nil {
		return nil, fmt.Errorf(`a %s line needs "msg" or "raw"`, t)
	}
	b, err := msgFromJSON(t, l.Msg)
	if err != nil {
		return nil, fmt.Errorf("%s msg: %v", t, err)
	}
	return b, nil
}

// sameMessage refuses a line whose msg no longer says what its raw says:
// someone edited msg and would lose the edit silently.
func sameMessage(t image.Type, raw []byte, js json.RawMessage) error {
	m := reflecting(t)
	if proto.Unmarshal(raw, m) != nil {
		// raw is not a valid message (decode said so in "error"); msg
		// cannot describe it, so there is nothing to compare.
		return nil
	}
	// Compare as JSON sees them: raw's unknown fields have no JSON form.
	rawJS, err := jsonOut.Marshal(m)
	if err != nil {
		return nil
	}
	a, b := reflecting(t), reflecting(t)
	if jsonIn.Unmarshal(rawJS, a) != nil {
		return nil
	}
	if err := jsonIn.Unmarshal(js, b); err != nil {
		return fmt.Errorf("%s msg: %v", t, err)
	}
	if !proto.Equal(a, b) {
		return fmt.Errorf("%s: msg differs from raw, and raw is what gets written; delete \"raw\" to write the edited msg", t)
	}
	return nil
}
