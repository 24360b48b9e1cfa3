#!/usr/bin/env bash
# pbgen.sh OUT writes the Go of lib/pb/*.proto into OUT: lib/pb for
# `make generate`, a temporary directory for lib/pb's test that the
# committed files are current (TestGeneratedCodeIsCurrent).
#
#   OUT/*.pb.go           the records as plain structs (protoc-gen-go's types
#                         rewritten by lib/pb/internal/plain) and their codec
#                         (protoc-gen-go-vtproto): what the commands link, no
#                         protobuf runtime (doc/performance.md 92)
#   OUT/protomsg/*.pb.go  the same records as protobuf messages, with
#                         reflection: crit's JSON and the tests
#
# protoc must be installed (scripts/deps.sh generate); the plugins are
# $PROTOC_GEN_GO and $PROTOC_GEN_GO_VTPROTO, else scripts/deps.sh's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
(($# == 1)) || { echo "usage: $0 OUT" >&2; exit 2; }
mkdir -p "$1/protomsg"
out=$(cd "$1" && pwd)
go_plugin=${PROTOC_GEN_GO:-$("$root/scripts/deps.sh" protoc-gen-go)}
vt_plugin=${PROTOC_GEN_GO_VTPROTO:-$("$root/scripts/deps.sh" protoc-gen-go-vtproto)}
cd "$root/lib/pb"
protos=(*.proto)
protoc -I . --plugin=protoc-gen-go="$go_plugin" --plugin=protoc-gen-go-vtproto="$vt_plugin" \
	--go_out="$out" --go_opt=paths=source_relative \
	--go-vtproto_out="$out" --go-vtproto_opt=paths=source_relative,features=marshal+unmarshal+size \
	"${protos[@]}"
reflecting=()
for p in "${protos[@]}"; do reflecting+=("--go_opt=M$p=crpipe/lib/pb/protomsg;protomsg"); done
protoc -I . --plugin=protoc-gen-go="$go_plugin" --go_out="$out/protomsg" --go_opt=paths=source_relative \
	"${reflecting[@]}" "${protos[@]}"
cd "$root"
go run ./lib/pb/internal/plain -proto lib/pb "$out"/*.pb.go
