/* trainer_metrics.c: the trainer's /metrics text (see trainer_metrics.h). */
#include "trainer_metrics.h"

#include "text_buf.h"
#include "timer.h"

char *trainer_metrics_render(const stats_trainer *f, const online_trainer_status *s,
                             const stream_consumer_stats *cs, size_t *len) {
    text_buf b = {0};
    prom_gauge(&b, "duel_trainer_up", "1 while duel train runs its loop.", 1);
    prom_gauge(&b, "duel_trainer_step", "Policy updates applied (from the checkpoint on).",
               (double)s->step);
    prom_counter(&b, "duel_trainer_prefs_applied_total", "Real a/b pairs trained on.",
                 (uint64_t)s->prefs_applied);
    prom_gauge(&b, "duel_trainer_published_version", "Newest snapshot version published.",
               (double)s->published_version);
    prom_gauge(&b, "duel_trainer_lag_entries",
               "Entries of duel:prefs the consumer group has not read yet.", (double)f->lag_entries);
    prom_gauge(&b, "duel_trainer_lag_seconds", "Age of the oldest entry not read yet (0: none).",
               f->lag_s);
    prom_gauge(&b, "duel_trainer_loss", "DAP loss of the last update.", s->loss);
    prom_gauge(&b, "duel_trainer_erm_loss", "ERM loss of the last update.", s->erm_loss);
    prom_gauge(&b, "duel_trainer_kl", "KL to the reference over the last batch's responses.", s->kl);
    prom_gauge(&b, "duel_trainer_grad_norm", "Gradient norm of the last update (before clipping).",
               s->grad_norm);
    prom_gauge(&b, "duel_trainer_lr", "Policy learning rate of the last update.", s->lr);
    prom_gauge(&b, "duel_trainer_erm_accuracy",
               "Running accuracy of the ERM mean on votes before training on them.", s->erm_accuracy);
    prom_gauge(&b, "duel_trainer_batch_size", "Real pairs per update in effect (knob batch_size).",
               (double)f->batch_size);
    prom_gauge(&b, "duel_trainer_vote_to_publish_seconds",
               "Mean time from vote to the snapshot holding it, over the last snapshot's votes.",
               f->vote_to_publish_s);
    prom_gauge(&b, "duel_trainer_vote_to_publish_max_seconds",
               "Time from the oldest vote of the last snapshot to its publication.",
               f->vote_to_publish_max_s);
    prom_counter(&b, "duel_trainer_entries_total", "Stream entries read by this process.",
                 (uint64_t)cs->entries);
    prom_counter(&b, "duel_trainer_dead_letters_total",
                 "Entries sent to duel:prefs:dead by this process.", (uint64_t)cs->dead);
    prom_counter(&b, "duel_trainer_updates_total", "Updates applied by this process.",
                 (uint64_t)cs->updates);
    prom_counter(&b, "duel_trainer_snapshots_total", "Snapshots published by this process.",
                 (uint64_t)cs->snapshots);
    prom_counter(&b, "duel_trainer_checkpoints_total", "Checkpoints written by this process.",
                 (uint64_t)cs->checkpoints);
    prom_gauge(&b, "duel_trainer_render_timestamp_seconds", "When these figures were taken.",
               (double)duel_time_unix_ms() / 1000.0);
    return text_buf_take(&b, len);
}
