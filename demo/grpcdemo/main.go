// Command grpcdemo is the demo's gRPC twin, run by handoffd the same way:
// it takes its listener through package handoff and drains with package
// handoffgrpc. Its service, handoff.demo.Demo, has two methods (protobuf
// messages of the well-known StringValue type, so no generated code):
//
//	Hello(StringValue) returns (StringValue)         {"generation":N,"echo":"..."}
//	Ticks(StringValue) returns (stream StringValue)  {"generation":N,"seq":K} every 100 ms
//
// At a drain, Ticks ends with status UNAVAILABLE ("generation N is
// draining"), spread over --spread, and the client calls it again on the
// next generation.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/handoffd/handoffd/handoff"
	"github.com/handoffd/handoffd/handoff/handoffgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// tickEvery is the pace of Ticks.
const tickEvery = 100 * time.Millisecond

func main() {
	if err := run(os.Args[1:]); err != nil {
		slog.Error("grpcdemo failed", "err", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("grpcdemo", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9090", "listen address when not started by handoffd")
	name := fs.String("listener", "grpc", "name of the listener handoffd hands over")
	drainTimeout := fs.Duration("drain-timeout", 0, "longest GracefulStop before open calls are stopped; 0: what handoffd allows, less a margin (handoff.DrainTimeout), or 30s without handoffd")
	spread := fs.Duration("spread", handoff.DefaultSpread, "while draining, end Ticks streams spread over this window")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := handoff.Listen(*name, *addr)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	hs := handoffgrpc.New(gs)
	hs.DrainTimeout, hs.Spread = *drainTimeout, *spread
	gs.RegisterService(&serviceDesc, &demo{generation: handoff.Generation(), hs: hs})
	slog.Info("serving gRPC", "generation", handoff.Generation(), "pid", os.Getpid(), "addr", ln.Addr().String())
	err = hs.Serve(context.Background(), ln)
	slog.Info("drained", "generation", handoff.Generation(), "clean", err == nil)
	return err
}

// demo implements handoff.demo.Demo.
type demo struct {
	generation int
	hs         *handoffgrpc.Server
}

func (d *demo) hello(_ context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return wrapperspb.String(fmt.Sprintf(`{"generation":%d,"echo":%s}`, d.generation, strconv.Quote(req.GetValue()))), nil
}

func (d *demo) ticks(_ *wrapperspb.StringValue, stream grpc.ServerStream) error {
	ctx := stream.Context()
	draining := d.hs.Draining(ctx)
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		select {
		case <-draining:
			return status.Errorf(codes.Unavailable, "generation %d is draining", d.generation)
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-tick.C:
		}
		msg := wrapperspb.String(fmt.Sprintf(`{"generation":%d,"seq":%d}`, d.generation, seq))
		if err := stream.SendMsg(msg); err != nil {
			return err
		}
	}
}

// demoService is what serviceDesc's handlers call.
type demoService interface {
	hello(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
	ticks(*wrapperspb.StringValue, grpc.ServerStream) error
}

// serviceDesc is what protoc-gen-go-grpc would generate for:
//
//	service Demo {
//	  rpc Hello(google.protobuf.StringValue) returns (google.protobuf.StringValue);
//	  rpc Ticks(google.protobuf.StringValue) returns (stream google.protobuf.StringValue);
//	}
var serviceDesc = grpc.ServiceDesc{
	ServiceName: "handoff.demo.Demo",
	HandlerType: (*demoService)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Hello",
		Handler: func(srv any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
			req := new(wrapperspb.StringValue)
			if err := dec(req); err != nil {
				return nil, err
			}
			call := func(ctx context.Context, req any) (any, error) {
				return srv.(demoService).hello(ctx, req.(*wrapperspb.StringValue))
			}
			if intercept == nil {
				return call(ctx, req)
			}
			return intercept(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/handoff.demo.Demo/Hello"}, call)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Ticks",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			req := new(wrapperspb.StringValue)
			if err := stream.RecvMsg(req); err != nil {
				return err
			}
			return srv.(demoService).ticks(req, stream)
		},
	}},
	Metadata: "handoff/demo.proto",
}
