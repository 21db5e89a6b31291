/* trainer_config.h: the online trainer's settings read from the loaded configuration (the
 * sections model, erm, trainer and redis of config/default.json; docs/CONFIG.md), every key
 * range-checked and named by its dotted path in messages. One reader for every process that
 * runs the trainer: `duel train` (cmd_train_service.c) and `duel sim --inprocess`. */
#ifndef DUEL_CLI_TRAINER_CONFIG_H
#define DUEL_CLI_TRAINER_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "online_trainer.h"
#include "redis_link.h"
#include "stream_consumer.h"

typedef struct trainer_config {
    online_trainer_options trainer;
    stream_consumer_options consumer;
    redis_link_config redis_link; /* redis.sentinels, master_name (the consumer's link) */
    char model_path[4096], model_id[256], erm_path[4096], host[256], consumer_name[128];
    char transport[16];
    int transport_device, nccl_world_size;
    char metrics_listen[300]; /* trainer.metrics_listen: "" or HOST:PORT */
} trainer_config;

/* Fills *c with the code defaults, then reads root (what duel_config_load assembled from
 * config_path, which may be NULL, and the --set texts sets[0..n_sets)) on top. A non-default
 * trainer.loss takes that loss's own beta unless trainer.beta is set explicitly (in the file or
 * by a --set). */
int trainer_config_load(json_t *root, const char *config_path, const char *const *sets, size_t n_sets,
                        trainer_config *c, duel_error *err);

#endif
