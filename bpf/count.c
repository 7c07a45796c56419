//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// count counts, on demand, the TCP connections that one process holds on
// a set of local ports. It is a task_file iterator (iter/task_file) that
// handoffd attaches to one process at a time (bpf_iter_link_info.task.pid,
// Linux >= 6.1) and runs by reading the iterator: the kernel calls it once
// per open file of the process. Nothing runs on a connection's path; a
// count costs one call per open file, when status or a scrape asks.
//
// A socket on a port of the ports map counts there when it is ESTABLISHED
// or CLOSE_WAIT. A listening socket on such a port is written out with
// its accept queue, which holds the connections that no process has
// accepted yet. So is a connection whose file has references besides the
// one of its fd (the iterator holds one while it visits the file): the
// same socket may be in another fd of the process or in another process,
// and user space counts each of those once, by inode.
//
// parents, an iter/task iterator over every process of the host, lists
// the processes with their parents, for a generation's descendants.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

// The kernel's types, reduced to the fields read here; CO-RE relocates
// each field to where the running kernel has it.
struct bpf_iter_meta {
	void *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct file;

struct files_struct;

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *real_parent;
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

// Linux < 6.13 counts the references of a file in f_count, later ones in
// f_ref, which holds the count less one.
typedef struct {
	long counter;
} atomic_long_t;

struct file___count {
	atomic_long_t f_count;
} __attribute__((preserve_access_index));

typedef struct {
	atomic_long_t refcnt;
} file_ref_t;

struct file___ref {
	file_ref_t f_ref;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__u16 skc_num;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_type;
	__u16 sk_protocol;
	__u32 sk_ack_backlog;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
// include/net/tcp_states.h
#define TCP_ESTABLISHED 1
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10

// What one port counted, zeroed by user space before a count.
struct port_count {
	__u64 held; // connections counted here, each held by this fd alone
	__u64 out;  // sockets written out for user space to count
};

// The ports to count, in host byte order.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct port_count);
} ports SEC(".maps");

// A socket that user space counts: a listener with its accept queue, or a
// connection that more than one fd may hold.
struct sock_out {
	__u64 ino;     // the socket's inode number
	__u32 port;    // local port
	__u32 backlog; // a listener's accept queue; ~0 for a connection
};

#define NOT_LISTENING 0xffffffff

// refs returns how many references the file has.
static __always_inline long refs(struct file *f)
{
	if (bpf_core_field_exists(struct file___ref, f_ref))
		return BPF_CORE_READ((struct file___ref *)f, f_ref.refcnt.counter) + 1;
	return BPF_CORE_READ((struct file___count *)f, f_count.counter);
}

// The fd tables this run of the iterator (one process) has counted, so
// that a thread that shares one of them is skipped: Linux 6.1 visits
// every thread of the process with the table they share, and every
// release visits each thread when the first one has exited (its table
// gone, the others' no longer "the same as the leader's"). Reset at the
// run's first file; the runs of one program never overlap (user space
// counts one process at a time).
#define MAX_TABLES 8
__u64 tables[MAX_TABLES];
__u32 ntables;
// visiting is the thread whose files the run is visiting, and skipping
// says whether they were counted with another thread's.
__s32 visiting;
__u32 skipping;

// counted_before reports whether the files of task, which the iterator
// is visiting, were counted already with another thread of the process.
static __always_inline int counted_before(struct bpf_iter__task_file *ctx, struct task_struct *task)
{
	if (ctx->meta->seq_num == 0) {
		ntables = 0;
		visiting = 0;
	}
	if (task->pid == visiting)
		return skipping;
	visiting = task->pid;
	skipping = 0;
	__u64 files = (__u64)BPF_CORE_READ(task, files);
	for (int i = 0; i < MAX_TABLES; i++) {
		if (i >= ntables)
			break;
		if (tables[i] == files) {
			skipping = 1;
			return 1;
		}
	}
	// Past MAX_TABLES tables in one process (threads that unshared
	// theirs), a thread that shares one not kept is counted again.
	if (ntables < MAX_TABLES)
		tables[ntables++] = files;
	return 0;
}

SEC("iter/task_file")
int count(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct task_struct *task = ctx->task;

	if (!file || !task || counted_before(ctx, task))
		return 0;
	struct socket *sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	struct sock *sk = sock->sk;
	if (!sk)
		return 0;
	unsigned short family = sk->__sk_common.skc_family;
	if ((family != AF_INET && family != AF_INET6) || sk->sk_type != SOCK_STREAM ||
	    sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u32 port = sk->__sk_common.skc_num;
	struct port_count *c = bpf_map_lookup_elem(&ports, &port);
	if (!c)
		return 0;

	struct sock_out out = { .port = port, .backlog = NOT_LISTENING };
	unsigned char state = sk->__sk_common.skc_state;
	if (state == TCP_LISTEN) {
		out.backlog = sk->sk_ack_backlog;
	} else if (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT) {
		return 0;
	} else if (refs(file) <= 2) {
		// This fd's reference and the iterator's: no other fd has it.
		__sync_fetch_and_add(&c->held, 1);
		return 0;
	}
	out.ino = BPF_CORE_READ(file, f_inode, i_ino);
	__sync_fetch_and_add(&c->out, 1);
	bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
	return 0;
}

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} __attribute__((preserve_access_index));

// A process and its parent, as parents writes them.
struct parent_out {
	__u32 pid;
	__u32 ppid;
};

// parents writes out every process of the host with its parent (in the
// pid namespace of the iterator's reader: handoffd's), so that user space
// finds a generation's descendants in one read, without a file of /proc
// per thread. A thread other than a process's first is skipped.
SEC("iter/task")
int parents(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;

	if (!task || task->pid != task->tgid)
		return 0;
	struct task_struct *parent = task->real_parent;
	struct parent_out out = { .pid = task->tgid, .ppid = parent ? parent->tgid : 0 };
	bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
	return 0;
}

char __license[] SEC("license") = "Dual MIT/GPL";
