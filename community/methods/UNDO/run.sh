#!/bin/bash
# UNDO on TOFU with OpenUnlearning's own scripts (run from the OU checkout root with duet-plugin installed):
# unlearn with an OU baseline (GradDiff) or DUET, then noise-and-distill the result, then evaluate both.
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
teachers=(
    "GradDiff unlearn/tofu/default"
    "DUET unlearn/tofu/duet"
)

per_device_train_batch_size=16
gradient_accumulation_steps=2

alphas=(0.25 0.6)
betas=(0.0 0.1)
lrs=(2e-5 1e-4)

for split in "${forget_retain_splits[@]}"; do
    forget_split=$(echo $split | cut -d' ' -f1)
    retain_split=$(echo $split | cut -d' ' -f2)
    holdout_split=$(echo $split | cut -d' ' -f3)
    for model in "${models[@]}"; do
        model_path=open-unlearning/tofu_${model}_full
        retain_logs=saves/eval/tofu_${model}_${retain_split}/TOFU_EVAL.json
        for teacher in "${teachers[@]}"; do
            trainer=$(echo $teacher | cut -d' ' -f1)
            experiment=$(echo $teacher | cut -d' ' -f2)
            teacher_task=tofu_${model}_${forget_split}_${trainer}

            # Stage 1: unlearn (the teacher)
            if [ ! -f saves/unlearn/${teacher_task}/config.json ]; then
                CUDA_VISIBLE_DEVICES=0 python src/train.py --config-name=unlearn.yaml \
                experiment=${experiment} trainer=${trainer} task_name=${teacher_task} model=${model} \
                forget_split=${forget_split} retain_split=${retain_split} holdout_split=${holdout_split} \
                model.model_args.pretrained_model_name_or_path=${model_path} retain_logs_path=${retain_logs} \
                trainer.args.per_device_train_batch_size=$per_device_train_batch_size \
                trainer.args.gradient_accumulation_steps=$gradient_accumulation_steps \
                trainer.args.eval_strategy=no trainer.args.eval_on_start=False
            fi

            for alpha in "${alphas[@]}"; do
                for beta in "${betas[@]}"; do
                    for lr in "${lrs[@]}"; do
                        task_name=${teacher_task}_UNDO_a${alpha}_b${beta}_lr${lr}
                        echo ${task_name}: noise-and-distill saves/unlearn/${teacher_task}

                        # Stages 2-3: noise a copy of the teacher, distil the teacher back on the retain split
                        CUDA_VISIBLE_DEVICES=0 python src/train.py --config-name=unlearn.yaml \
                        experiment=unlearn/tofu/undo task_name=${task_name} model=${model} \
                        forget_split=${forget_split} retain_split=${retain_split} holdout_split=${holdout_split} \
                        model.model_args.pretrained_model_name_or_path=${model_path} \
                        trainer.method_args.teacher=saves/unlearn/${teacher_task} \
                        trainer.method_args.alpha=${alpha} trainer.method_args.beta=${beta} \
                        trainer.args.learning_rate=${lr} \
                        trainer.args.per_device_train_batch_size=$per_device_train_batch_size \
                        trainer.args.gradient_accumulation_steps=$gradient_accumulation_steps \
                        trainer.args.eval_strategy=no trainer.args.eval_on_start=False

                        # Eval
                        CUDA_VISIBLE_DEVICES=0 python src/eval.py experiment=eval/tofu/default.yaml \
                        forget_split=${forget_split} holdout_split=${holdout_split} model=${model} \
                        task_name=${task_name} \
                        model.model_args.pretrained_model_name_or_path=saves/unlearn/${task_name} \
                        paths.output_dir=saves/unlearn/${task_name}/evals retain_logs_path=${retain_logs}
                    done
                done
            done
        done
    done
done

########################################################################################################################
########################################### Final best parameters #####################################################
########################################################################################################################

# Not tuned yet: no GPU run of this grid has been made by the plugin's developers. Fill in after running the grid above.
