/* The round trip of one cache line between two threads on the first two CPUs this process may
 * run on, in ns: where a hypervisor puts two vCPUs (one core complex or two) changes what
 * sharing data between threads costs, and with it every multi-threaded time. driver.py runs
 * it before each measurement and records the figure beside it.
 *
 * Usage: placement [MILLISECONDS]   (default 200). Prints the median of 8 slices, in ns, or
 * "none" when fewer than two CPUs are available. Bounded: each slice stops after its time. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SLICES 8

static _Alignas(128) _Atomic long line;
static _Atomic int stop;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static int cpus[2];

/* Answers every odd value with the next even one, until told to stop. */
static void *echo(void *unused) {
    (void)unused;
    pin(cpus[1]);
    while (!atomic_load(&stop)) {
        long v = atomic_load_explicit(&line, memory_order_acquire);
        if (v & 1)
            atomic_store_explicit(&line, v + 1, memory_order_release);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    double ms = argc > 1 ? atof(argv[1]) : 200.0;
    if (ms <= 0 || ms > 10000) {
        fprintf(stderr, "placement: MILLISECONDS must be in (0, 10000], got %s\n", argv[1]);
        return 2;
    }
    cpu_set_t s;
    if (sched_getaffinity(0, sizeof s, &s) != 0) {
        perror("placement: sched_getaffinity");
        return 1;
    }
    int found = 0;
    for (int c = 0; c < CPU_SETSIZE && found < 2; c++)
        if (CPU_ISSET(c, &s))
            cpus[found++] = c;
    if (found < 2) {
        puts("none");
        return 0;
    }
    pin(cpus[0]);
    pthread_t t;
    if (pthread_create(&t, NULL, echo, NULL) != 0) {
        perror("placement: pthread_create");
        return 1;
    }
    double per[SLICES];
    long v = 0;
    for (int i = 0; i < SLICES; i++) {
        double start = now(), end = start + ms / 1e3 / SLICES;
        long trips = 0;
        /* The echo thread may be descheduled: the slice's clock still bounds the wait. */
        while (now() < end) {
            atomic_store_explicit(&line, v + 1, memory_order_release);
            for (unsigned polls = 1; atomic_load_explicit(&line, memory_order_acquire) != v + 2;
                 polls++)
                if (polls % 1024 == 0 && now() >= end)
                    break;
            if (atomic_load_explicit(&line, memory_order_acquire) != v + 2)
                break;
            v += 2;
            trips++;
        }
        per[i] = trips ? (now() - start) / trips * 1e9 : 1e9;
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    qsort(per, SLICES, sizeof per[0], cmp);
    printf("%.0f\n", (per[SLICES / 2 - 1] + per[SLICES / 2]) / 2);
    return 0;
}
