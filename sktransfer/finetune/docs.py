"""The parameter and attribute sections shared by the fine-tuners' docstrings.

FineTunedClassifier and FineTunedRegressor take the same parameters but
their own target ones; their docstrings are built from these sections so
the two never drift apart.
"""

PARAMS_DOC = """
    backbone : str, nn.Module, callable or fitted estimator, default="torchvision:resnet18"
        ``"torchvision:<name>"``, ``"timm:<name>"``, ``"hf:<model id or local
        directory>"``, an ``nn.Module`` (its forward output is the embedding),
        a zero-argument callable returning one, or a fitted sktransfer
        estimator, whose (fine-tuned) backbone is the starting point.
    weights : "DEFAULT", str, None or path, default="DEFAULT"
        ``"DEFAULT"`` loads the source's pretrained weights (for a module or a
        fitted estimator: the weights it has); a torchvision tag such as
        ``"IMAGENET1K_V2"``; ``None`` for random initialization (training from
        scratch); or a path to a local ``.pt``/``.pth``/``.safetensors`` file.
    head : tuple of int, optional
        ``None``: one linear layer on the embedding. A tuple of hidden sizes,
        such as ``(256,)``: an MLP with ReLU activations.
    dropout : float, default=0.0
        Dropout probability before each linear layer of the head.
    freeze : {"auto", "none", "backbone"} or int, default="auto"
        ``"auto"``: what the backbone's family advises: the convolutional
        feature encoder of a speech model (wav2vec2, HuBERT, WavLM,
        data2vec-audio) stays frozen, as speech fine-tuning does; every other
        backbone trains whole. ``"none"``: the whole network trains. ``"backbone"``: only the head
        trains (a linear probe with the default head). An int N: the first N
        parameter groups of the backbone (``backbone_.param_groups``, input
        first) stay frozen. Frozen BatchNorm layers stay in evaluation mode, so
        their running statistics do not drift either.
    freeze_epochs : int, default=0
        Head first (LP-FT, Kumar et al. 2022): before training, fit the head
        to convergence on the frozen backbone's embeddings (full-batch
        L-BFGS, the solution ``LogisticRegression`` / ``Ridge`` with their
        default penalty would find; see :func:`sktransfer.training.probe.fit_head`),
        then train the head alone (whole backbone frozen) for this many
        epochs, then apply ``freeze``. Fine-tuning then starts from the linear
        probe's optimum rather than from a random head whose large early
        gradients distort the pretrained features. With ``freeze="backbone"``
        the fitted head is the linear probe, and the epochs only refine it
        (at the smaller default ``lr`` of head-first training).
    lr : float or None, default=None
        Learning rate of the head (the peak rate under ``"onecycle"``); the
        backbone's groups train at it times ``backbone_lr_mult`` powers.
        ``None`` picks it by how training starts, from measurements at few
        labels per class (user guide, "Few labels"): ``1e-3`` when a new head
        trains from random weights; ``1e-4`` when the head is first fitted to
        convergence (``freeze_epochs > 0``): only the pretrained features
        move then, and larger steps wreck them (``benchmarks/RESULTS.md``,
        "Few-shot transfer"); ``2e-4`` with ``objective="contrastive"``, where
        it is the backbone's rate (the head is fitted afterwards); ``1e-2``
        with an ``adapter``, with either objective.
    backbone_lr_mult : float, default=1.0
        Discriminative learning rates: backbone group ``i`` (0-based, input
        first) of ``G`` trains at ``lr * backbone_lr_mult ** (G - i)``. A value
        such as 0.5 gives the last backbone group half the head's rate and
        earlier groups geometrically smaller ones.
    weight_decay : float, default=0.01
        Weight decay of weight matrices and kernels; biases and normalization
        parameters are never decayed.
    optimizer : {"adamw", "adam", "sgd"} or torch.optim.Optimizer class, default="adamw"
        ``"sgd"`` uses Nesterov momentum 0.9. A class is called as
        ``optimizer(param_groups, lr=lr)``.
    schedule : {"onecycle", "cosine"} or None, default="onecycle"
        Learning-rate schedule stepped every batch, spanning the epochs of one
        ``fit`` (or ``partial_fit``) call: ``"onecycle"`` warms up over the
        first 25% of steps then anneals; ``"cosine"`` decays from ``lr``
        towards zero; ``None`` keeps the rates constant.
    l2sp : float, default=0.0
        Strength alpha of the L2-SP penalty added to the training loss:
        ``alpha/2 * sum ||w - w_pretrained||^2`` over the backbone's
        (transferred) parameters plus ``alpha/2 * sum ||w||^2`` over the head's
        (see :class:`~sktransfer.regularizers.L2SP`). It keeps the weights
        near the pretrained ones; consider ``weight_decay=0`` with it, since
        weight decay pulls towards zero instead.
    max_epochs : int or None, default=None
        Epochs of ``fit``. ``None``: 10, or 3 with ``objective="contrastive"``
        (each of its epochs passes over ``n_pairs`` pairs per sample).
    batch_size : int, default=32
        Samples per training and prediction batch.
    early_stopping : int or bool, optional
        Patience: hold out ``validation_fraction`` of the training data, stop
        when the validation loss has not improved for this many epochs, and
        restore the weights of the best epoch. ``True`` means a patience of 5
        epochs: enough to ride out the noisy validation loss of a small
        held-out set, few enough not to train long past the best epoch.
        ``None`` or ``False``: train on all data for ``max_epochs`` epochs.
    validation_fraction : float, default=0.1
        Share of the data held out when ``early_stopping`` is set (stratified
        by class for classifiers when possible).
    augment : bool, default=False
        Light augmentation of training batches for image backbones: random
        horizontal flip and random resized crop (area 60-100%), applied to the
        preprocessed batch on the training device.
    device : str, default="auto"
        ``"auto"`` uses CUDA, then Apple MPS, then the CPU; or any torch device
        string. The fitted network is kept on the CPU; predictions on an
        accelerator run on a copy of it there, made once and reused (see
        ``release_engine``).
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast dtype (automatic mixed precision); ``"auto"`` is bf16 (fp16
        with loss scaling on GPUs without bf16) on CUDA and fp32 elsewhere.
        For predictions with ``runtime="openvino"`` on a CPU with bf16
        units, ``fit`` runs a probe on up to 256 fit samples and keeps bf16
        only if it agrees with fp32 (a classifier: the same labels and
        probabilities within 1e-3; a regressor: embeddings with least cosine
        similarity >= 0.9999; see ``precision_``).
    num_workers : int, default=0
        DataLoader worker processes that decode and preprocess batches.
    image_size : int, optional
        Crop side fed to an image backbone instead of its weights' own.
    prompt : str, optional
        For text encoders, a text prepended to every input, as
        sentence-transformers' prompts are: the name of one of the model's
        prompts (e.g. ``"query"``) or the prompt text itself; ``""`` for
        none. ``None`` keeps the model's default prompt, if it names one.
    sampling_rate : int, optional
        For audio backbones, the sampling rate (Hz) of array inputs; every
        clip is resampled to the model's own rate. Required for arrays (a
        rate is never assumed); files carry their own rate.
    max_duration : "auto", float or None, default="auto"
        For audio backbones, the seconds kept of each clip: longer clips are
        truncated to their start. ``"auto"``: the model's window (Whisper
        30 s, AST about 10 s) or 30 s for waveform models; ``None``: whole
        clips (their frames' attention grows with the square of the length).
    random_state : int, RandomState or None, default=None
        Seeds initialization, shuffling, dropout, augmentation and the
        validation split: on the CPU, the same seed and data give the same
        model.
    verbose : int, default=0
        0: silent; 1: a table of losses and scores after every epoch; 2: also
        a progress bar over batches.
    callbacks : list of skorch callbacks, optional
        Extra skorch callbacks (instances or ``(name, callback)`` pairs), for
        example ``skorch.callbacks.GradientNormClipping``. They are copied at
        the start of each ``fit``.
    keep_optimizer : bool, default=False
        Keep the optimizer's state (such as Adam's moment estimates) after
        training, on the CPU and in pickles, so that ``partial_fit`` continues
        exactly. Off by default, the state is released when training ends (it
        is twice the size of the model), and a ``partial_fit`` after ``fit``
        starts with fresh optimizer moments.
    distributed : {"auto", True, False}, default="auto"
        Data-parallel training when the script runs as several processes,
        launched by ``torchrun --nproc_per_node=N`` (or ``accelerate
        launch``, or ``srun`` with ``MASTER_ADDR`` and ``MASTER_PORT`` set):
        every rank calls ``fit`` with the same data, trains on its own shard
        of each epoch (``batch_size`` samples per step and process, so the
        effective batch is ``N * batch_size``), gradients are averaged, and
        every rank ends with the same weights. ``"auto"`` joins the launch's
        process group (initializing it, NCCL on CUDA and gloo on the CPU,
        when nothing else did) and trains alone outside a launch; ``True``
        raises outside one; ``False`` trains in this process alone even under
        a launch. See the user guide, "Multi-GPU and multi-node fine-tuning".
    sync_batchnorm : bool, default=False
        In a data-parallel fit on CUDA, compute BatchNorm statistics over the
        batches of all processes (``SyncBatchNorm``) instead of each
        process's own; frozen BatchNorm layers stay frozen.
    runtime : {"torch", "compile", "onnx", "openvino"}, default="torch"
        What runs the fitted network in ``transform``, ``predict`` and
        ``predict_proba`` (training always runs in PyTorch): PyTorch eagerly;
        ``torch.compile`` (compiled at the first call); ONNX Runtime
        (exported at the first call; ``pip install "sktransfer[onnx]"``;
        float32); or OpenVINO on the CPU (``pip install
        "sktransfer[openvino]"``; float32, or bf16 with ``precision="bf16"``
        where the CPU has bf16 units). See :doc:`/speed`.
    quantize : {None, "int8"}, default=None
        ``"int8"``, on the CPU: with ``runtime="onnx"``, dynamic int8
        quantization of the exported graph; with ``runtime="openvino"``,
        NNCF's static quantization, calibrated at the end of ``fit`` (and of
        each ``partial_fit``) on at most 300 of its samples.
    adaptation : {None, "coral", "mmd", "dann"}, default=None
        Unsupervised domain adaptation from the target domain's samples
        given to ``fit`` without labels (``y = -1`` for a classifier, NaN for
        a regressor, or ``sample_domain < 0``; skada's convention): ``"coral"``
        matches the covariances of the source and target embeddings (Deep
        CORAL), ``"mmd"`` their multi-kernel maximum mean discrepancy (DAN),
        ``"dann"`` trains a domain classifier through gradient reversal
        (DANN; the MMD and DANN weights warm up over the steps of the ``fit``
        call). Each
        training batch pairs ``batch_size`` labelled samples with as many
        target samples; the unlabelled ones enter only the adaptation term,
        labelled target samples also the supervised loss. Early stopping
        validates on the labelled samples. Not with
        ``objective="contrastive"``, a fully frozen backbone or
        ``partial_fit``. See :doc:`/adaptation`.
    adaptation_weight : float or None, default=None
        lambda, the weight of the adaptation term in the training loss.
        None: the method's default, ``300`` for ``"coral"`` (its term is
        divided by ``4 d^2``), ``0.3`` for ``"mmd"``, ``1`` for ``"dann"``
        (``sktransfer.training.adaptation.DEFAULT_WEIGHTS``), set on the
        benchmark's shifts so that the default does not do worse than
        source-only training there. These are cautious starting points: on a
        shift where a method helps, a larger weight often helps more (MMD
        above all). The best weight depends on the shift and the network:
        choose it without target labels with
        :class:`~sktransfer.scorers.DeepEmbeddedValidation` in a search.
    gradient_accumulation_steps : int, default=1
        Optimizer steps take the gradient of this many consecutive batches,
        averaged as one batch of ``batch_size * gradient_accumulation_steps``
        samples (with ``sample_weight``, by their total weight): a large
        batch's step on the memory of ``batch_size``. Each forward pass still
        sees ``batch_size`` samples (BatchNorm statistics too), and the
        learning-rate schedule counts optimizer steps. The last step of an
        epoch takes the batches that are left.
    gradient_checkpointing : bool, default=False
        Keep fewer activations during training and recompute them in the
        backward pass: less memory for more compute. Hugging Face backbones
        use their own ``gradient_checkpointing_enable``, timm models
        ``set_grad_checkpointing``, other modules are checkpointed by
        parameter group. Results are unchanged.
    adapter : "lora", peft.PeftConfig or None, default=None
        Train small adapter layers inside the backbone instead of its
        weights (Hugging Face's ``peft``, ``pip install "sktransfer[peft]"``):
        the pretrained weights stay as they are, only the adapters and the
        head train. ``"lora"``: LoRA of rank 8 (alpha 16) on the attention
        projections of a transformer (query/key/value, q/k/v_proj, timm's
        qkv), else on every linear layer of the backbone. A ``peft`` config
        (``LoraConfig`` with DoRA or rsLoRA, ``IA3Config``, ``LoHaConfig``,
        ``LoKrConfig``...) is used as given (a copy: fit never changes it);
        its ``target_modules`` may be ``"auto"``. Predictions run with the
        adapters merged into the weights. ``lr=None`` then means 1e-2.
        Not with ``freeze="backbone"`` nor ``l2sp > 0``. See
        :doc:`/large_backbones`."""

ATTRIBUTES_DOC = """
    backbone_ : Backbone
        The fine-tuned backbone (network, preprocessing and layer groups);
        pass the fitted estimator as ``backbone=`` to another estimator to
        start from it.
    head_ : torch.nn.Module
        The trained head.
    l2sp_ : L2SP or None
        The L2-SP penalty and its reference weights (when ``l2sp > 0``).
    net_ : skorch.NeuralNet
        The skorch net that trains the model; rebuilt when needed, never
        pickled.
    history_ : skorch.History
        Per epoch: ``train_loss`` (including the L2-SP penalty), and with
        early stopping ``valid_loss`` and the validation score, ``dur``, and
        per batch the losses and the head's learning rate ``event_lr``.
    n_features_out_ : int
        Width of the embeddings :meth:`transform` returns.
    precision_ : {"fp32", "bf16"}
        With ``runtime="openvino"`` and ``precision="auto"`` at ``fit`` only:
        the precision the probe chose for predictions;
        ``precision_agreement_`` (where the probe ran: on CPUs with bf16
        units) the largest probability difference (classifier) or least
        embedding cosine similarity (regressor) it measured.
    int8_networks_ : dict
        With ``runtime="openvino"`` and ``quantize="int8"`` only: the networks
        NNCF calibrated for predictions and ``transform``;
        ``int8_agreement_`` the largest probability difference (classifier)
        or least embedding cosine similarity (regressor) from float32 on the
        calibration samples.
    n_features_in_ : int
        Columns seen in ``fit`` (tensor backbones only).
    feature_names_in_ : ndarray of str
        Column names seen in ``fit`` (tensor backbones given a DataFrame)."""
