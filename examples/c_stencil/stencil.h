/* A 2-D heat-diffusion simulator (Jacobi sweeps on an n x n grid of
 * doubles, fixed hot boundary) whose whole state is memory its caller
 * hands it: two grids and a step counter. It allocates nothing, so the
 * caller decides where the state lives (here: a memckpt arena, which
 * checkpoints it). */
#ifndef STENCIL_H
#define STENCIL_H

#include <stddef.h>
#include <stdint.h>

struct stencil_state {
	double *a, *b;     /* n * n doubles each: the grid is a after an even step, b after an odd one */
	uint64_t *step;    /* the steps taken */
	size_t n;
};

/* The initial condition: the grid zero, its top edge 100 (both grids). */
void stencil_init(struct stencil_state *s);
/* Advance `steps` Jacobi sweeps. */
void stencil_run(struct stencil_state *s, uint64_t steps);
/* BLAKE3 (memckpt's) of the current grid: 32 bytes into out. */
void stencil_digest(const struct stencil_state *s, uint8_t out[32]);

#endif
