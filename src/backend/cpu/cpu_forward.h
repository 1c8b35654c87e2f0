/* The phases of the CPU forward pass of one rank (forward.c), in the order
 * the CPU backend's driver (cpu_backend.c) runs them on every rank, with
 * the exchange of partial sums between them:
 *
 *   for each layer: attention block -> all-gather part_attn
 *                   MLP block       -> all-gather part_mlp
 *   logits (rows that want them)    -> columns to rank 0
 */
#ifndef PROTEUS_CPU_FORWARD_H
#define PROTEUS_CPU_FORWARD_H

#include "backend/instance.h"

/* Attention takes the rows of a prompt chunk in runs of up to this many
 * consecutive positions of one sequence; each run walks the sequence's pages
 * once. The per-thread scratch holds one run's softmax states. */
#define PT_CPU_ATTN_RUN 32

typedef void (*pt_cpu_phase)(pt_instance *e, pt_rank *r, uint32_t layer);

/* Layer 0: embedding; later layers: fold of the previous MLP partials into
 * the residual. Then rmsnorm, QKV, bias, RoPE, KV append, attention, and
 * O over the rank's groups into part_attn. */
void pt_cpu_attention_block(pt_instance *e, pt_rank *r, uint32_t layer);
/* Fold of the attention partials, rmsnorm, gate/up, SwiGLU, and down over
 * the rank's chunks into part_mlp. */
void pt_cpu_mlp_block(pt_instance *e, pt_rank *r, uint32_t layer);
/* Fold of the last MLP partials for the rows that want logits, final
 * rmsnorm, and the rank's vocabulary columns of the LM head. */
void pt_cpu_logits(pt_instance *e, pt_rank *r, uint32_t unused);
/* First vocabulary row of rank i's LM-head share (i == tp gives V). */
uint32_t pt_cpu_vocab_begin(const pt_instance *e, int i);

#endif
