#!/bin/bash
# BiDistill on TOFU with OpenUnlearning's own scripts (run from the OU checkout root with duet-plugin installed).
# Shaped like OU's community/methods/<METHOD>/run.sh; GPU defaults as OU's scripts use.

export MASTER_PORT=$(python -c "import socket; s=socket.socket(); s.bind(('', 0)); print(s.getsockname()[1]); s.close()")
echo "Master Port: $MASTER_PORT"

########################################################################################################################
########################################### Hyper parameter tuning #####################################################
########################################################################################################################

models=(
    "Llama-3.2-1B-Instruct"
)
forget_retain_splits=(
    "forget10 retain90 holdout10"
    "forget05 retain95 holdout05"
    "forget01 retain99 holdout01"
)

per_device_train_batch_size=16
gradient_accumulation_steps=2

lrs=(1e-5 5e-5)
w_pushes=(0 0.5 1)
distances=(huber bild)

for split in "${forget_retain_splits[@]}"; do
    forget_split=$(echo $split | cut -d' ' -f1)
    retain_split=$(echo $split | cut -d' ' -f2)
    holdout_split=$(echo $split | cut -d' ' -f3)
    for model in "${models[@]}"; do
        for lr in "${lrs[@]}"; do
            for w_push in "${w_pushes[@]}"; do
                for distance in "${distances[@]}"; do
                    task_name=tofu_${model}_${forget_split}_BiDistill_lr${lr}_push${w_push}_${distance}
                    model_path=open-unlearning/tofu_${model}_full
                    echo ${task_name}: Unlearning ${model_path} using BiDistill

                    # Unlearn
                    CUDA_VISIBLE_DEVICES=0 \
                    python src/train.py --config-name=unlearn.yaml \
                    experiment=unlearn/tofu/bidistill \
                    task_name=${task_name} \
                    model=${model} \
                    forget_split=${forget_split} \
                    retain_split=${retain_split} \
                    holdout_split=${holdout_split} \
                    model.model_args.pretrained_model_name_or_path=${model_path} \
                    retain_logs_path=saves/eval/tofu_${model}_${retain_split}/TOFU_EVAL.json \
                    trainer.args.per_device_train_batch_size=$per_device_train_batch_size \
                    trainer.args.gradient_accumulation_steps=$gradient_accumulation_steps \
                    trainer.args.eval_strategy=no \
                    trainer.args.eval_on_start=False \
                    trainer.args.learning_rate=$lr \
                    trainer.method_args.w_push=$w_push \
                    trainer.method_args.distance=$distance

                    # Eval
                    CUDA_VISIBLE_DEVICES=0 python src/eval.py \
                    experiment=eval/tofu/default.yaml \
                    '+eval/tofu_metrics@eval.tofu.metrics.prefill_attack=prefill_attack' \
                    '+eval/tofu_metrics@eval.tofu.metrics.over_refusal=over_refusal' \
                    forget_split=${forget_split} \
                    holdout_split=${holdout_split} \
                    model=${model} \
                    task_name=${task_name} \
                    model.model_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
                    paths.output_dir=saves/unlearn/${task_name}/evals \
                    retain_logs_path=saves/eval/tofu_${model}_${retain_split}/TOFU_EVAL.json
                done
            done
        done
    done
done

########################################################################################################################
########################################### Final best parameters #####################################################
########################################################################################################################

# Not tuned yet: no GPU run of this grid has been made by the plugin's developers. Fill in after running the grid above.
