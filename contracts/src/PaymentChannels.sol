// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

/// @title Uni-directional IPSX payment channels (micro-Raiden style)
/// @notice A sender locks a deposit for one receiver and pays it off-chain with EIP-712 balance proofs
/// (channel id, cumulative balance owed to the receiver). A channel ends either at once with the
/// sender's balance proof and the receiver's closing consent (a distinct EIP-712 type), or through an
/// uncooperative close by either side, a challenge period in which the receiver may submit a newer
/// proof, and a settle. A closing consent names the block timestamp it expires after, so the receiver
/// may go on taking payments on the channel once it has expired: an old consent cannot close the
/// channel at an old balance later. Channel ids are keccak256(sender, receiver, n) with a per-pair
/// counter n that never decreases, so a proof for a settled channel never matches a later one.
/// EIP-712 domain version 2: the closing consent carries its expiry (version 1's did not), so an
/// off-chain signer that reads `eip712Domain()` can tell which consent this deployment takes.
contract PaymentChannels is EIP712 {
    using SafeERC20 for IERC20;

    bytes32 public constant BALANCE_PROOF_TYPEHASH = keccak256("BalanceProof(bytes32 channelId,uint256 balance)");
    bytes32 public constant CLOSING_CONSENT_TYPEHASH =
        keccak256("ClosingConsent(bytes32 channelId,uint256 balance,uint256 expiresAt)");

    struct Channel {
        address sender;
        // Zero while open; while closing, the first timestamp at which `settle` is allowed.
        uint64 settleAfter;
        address receiver;
        uint256 deposit;
        // While closing, the balance the receiver will get at settlement.
        uint256 closingBalance;
    }

    IERC20 public immutable token;
    /// @notice Seconds between an uncooperative close and the earliest settle.
    uint256 public immutable challengePeriod;

    mapping(bytes32 channelId => Channel) private _channels;
    mapping(address sender => mapping(address receiver => uint256)) public pairNonce;

    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed sender,
        address indexed receiver,
        uint256 nonce,
        uint256 deposit
    );
    event ChannelToppedUp(bytes32 indexed channelId, uint256 amount, uint256 deposit);
    event ChannelCloseRequested(
        bytes32 indexed channelId,
        address indexed closer,
        uint256 balance,
        uint256 settleAfter
    );
    event ClosingBalanceUpdated(bytes32 indexed channelId, uint256 balance);
    event ChannelSettled(
        bytes32 indexed channelId,
        address indexed sender,
        address indexed receiver,
        uint256 paid,
        uint256 refunded,
        bool cooperative
    );

    error InvalidConfig();
    error InvalidReceiver(address receiver);
    error ZeroAmount();
    error ChannelNotFound(bytes32 channelId);
    error ChannelIsClosing(bytes32 channelId);
    error ChannelNotClosing(bytes32 channelId);
    error NotSender(address caller);
    error NotParticipant(address caller);
    error NotReceiver(address caller);
    error InvalidBalanceProof();
    error InvalidClosingSignature();
    error ConsentExpired(uint256 expiresAt);
    error BalanceExceedsDeposit(uint256 balance, uint256 deposit);
    error StaleProof(uint256 balance, uint256 closingBalance);
    error ChallengePeriodActive(uint256 settleAfter);
    error ChallengePeriodOver(uint256 settleAfter);

    constructor(IERC20 token_, uint256 challengePeriod_) EIP712("IPSX PaymentChannels", "2") {
        if (address(token_) == address(0) || challengePeriod_ == 0 || challengePeriod_ > type(uint32).max) {
            revert InvalidConfig();
        }
        token = token_;
        challengePeriod = challengePeriod_;
    }

    // ---- views -------------------------------------------------------------------------------

    /// @notice The id of the `nonce`-th channel from `sender` to `receiver` (nonces start at 1).
    function channelId(address sender, address receiver, uint256 nonce) public pure returns (bytes32) {
        return keccak256(abi.encode(sender, receiver, nonce));
    }

    /// @notice The channel's state; `sender` is zero for a channel that does not exist (or was settled).
    function getChannel(bytes32 id) external view returns (Channel memory) {
        return _channels[id];
    }

    /// @notice The EIP-712 digest the sender signs for a balance proof.
    function balanceProofDigest(bytes32 id, uint256 balance) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(BALANCE_PROOF_TYPEHASH, id, balance)));
    }

    /// @notice The EIP-712 digest the receiver signs to consent to a cooperative close at `balance`
    /// until `expiresAt` (a block timestamp, inclusive).
    function closingConsentDigest(bytes32 id, uint256 balance, uint256 expiresAt) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(CLOSING_CONSENT_TYPEHASH, id, balance, expiresAt)));
    }

    /// @notice The EIP-712 domain separator (bound to this chain id and this contract).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ---- lifecycle ---------------------------------------------------------------------------

    /// @notice Opens a channel to `receiver` funded with `deposit` tokens (approved beforehand).
    function open(address receiver, uint256 deposit) external returns (bytes32 id) {
        if (receiver == address(0) || receiver == msg.sender) revert InvalidReceiver(receiver);
        if (deposit == 0) revert ZeroAmount();
        uint256 nonce = ++pairNonce[msg.sender][receiver];
        id = channelId(msg.sender, receiver, nonce);
        _channels[id] = Channel({
            sender: msg.sender,
            settleAfter: 0,
            receiver: receiver,
            deposit: deposit,
            closingBalance: 0
        });
        emit ChannelOpened(id, msg.sender, receiver, nonce, deposit);
        token.safeTransferFrom(msg.sender, address(this), deposit);
    }

    /// @notice Adds `amount` to an open channel's deposit; sender only.
    function topUp(bytes32 id, uint256 amount) external {
        Channel storage channel = _openChannel(id);
        if (msg.sender != channel.sender) revert NotSender(msg.sender);
        if (amount == 0) revert ZeroAmount();
        channel.deposit += amount;
        emit ChannelToppedUp(id, amount, channel.deposit);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Settles at once on the sender's balance proof and the receiver's closing consent for
    /// the same balance, valid until `expiresAt` (inclusive; `ConsentExpired` in a later block);
    /// anyone may submit them, also during a challenge period.
    function cooperativeClose(
        bytes32 id,
        uint256 balance,
        uint256 expiresAt,
        bytes calldata balanceSignature,
        bytes calldata closingSignature
    ) external {
        Channel memory channel = _existingChannel(id);
        if (block.timestamp > expiresAt) revert ConsentExpired(expiresAt);
        if (balance > channel.deposit) revert BalanceExceedsDeposit(balance, channel.deposit);
        if (!_signedBy(balanceProofDigest(id, balance), balanceSignature, channel.sender)) {
            revert InvalidBalanceProof();
        }
        if (!_signedBy(closingConsentDigest(id, balance, expiresAt), closingSignature, channel.receiver)) {
            revert InvalidClosingSignature();
        }
        _settle(id, channel, balance, true);
    }

    /// @notice Starts the challenge period. The sender states the balance it owes (a signature is not
    /// needed for a claim against itself, pass empty bytes); the receiver must show a balance proof.
    function uncooperativeClose(bytes32 id, uint256 balance, bytes calldata balanceSignature) external {
        Channel storage channel = _openChannel(id);
        if (msg.sender != channel.sender && msg.sender != channel.receiver) revert NotParticipant(msg.sender);
        if (balance > channel.deposit) revert BalanceExceedsDeposit(balance, channel.deposit);
        bool proven = _signedBy(balanceProofDigest(id, balance), balanceSignature, channel.sender);
        if (msg.sender == channel.receiver && !proven) revert InvalidBalanceProof();
        uint256 settleAfter = block.timestamp + challengePeriod;
        channel.settleAfter = uint64(settleAfter);
        channel.closingBalance = balance;
        emit ChannelCloseRequested(id, msg.sender, balance, settleAfter);
    }

    /// @notice During the challenge period, the receiver raises the closing balance with a newer proof.
    function submitProof(bytes32 id, uint256 balance, bytes calldata balanceSignature) external {
        Channel storage channel = _existingChannel(id);
        if (channel.settleAfter == 0) revert ChannelNotClosing(id);
        if (block.timestamp >= channel.settleAfter) revert ChallengePeriodOver(channel.settleAfter);
        if (msg.sender != channel.receiver) revert NotReceiver(msg.sender);
        if (balance > channel.deposit) revert BalanceExceedsDeposit(balance, channel.deposit);
        if (balance <= channel.closingBalance) revert StaleProof(balance, channel.closingBalance);
        if (!_signedBy(balanceProofDigest(id, balance), balanceSignature, channel.sender)) {
            revert InvalidBalanceProof();
        }
        channel.closingBalance = balance;
        emit ClosingBalanceUpdated(id, balance);
    }

    /// @notice Pays out a closing channel once its challenge period is over; anyone may call.
    function settle(bytes32 id) external {
        Channel memory channel = _existingChannel(id);
        if (channel.settleAfter == 0) revert ChannelNotClosing(id);
        if (block.timestamp < channel.settleAfter) revert ChallengePeriodActive(channel.settleAfter);
        _settle(id, channel, channel.closingBalance, false);
    }

    // ---- internals ---------------------------------------------------------------------------

    function _existingChannel(bytes32 id) private view returns (Channel storage channel) {
        channel = _channels[id];
        if (channel.sender == address(0)) revert ChannelNotFound(id);
    }

    function _openChannel(bytes32 id) private view returns (Channel storage channel) {
        channel = _existingChannel(id);
        if (channel.settleAfter != 0) revert ChannelIsClosing(id);
    }

    function _signedBy(bytes32 digest, bytes calldata signature, address signer) private pure returns (bool) {
        (address recovered, ECDSA.RecoverError err, ) = ECDSA.tryRecoverCalldata(digest, signature);
        return err == ECDSA.RecoverError.NoError && recovered == signer;
    }

    /// @dev Deletes the channel before moving any token (checks-effects-interactions).
    function _settle(bytes32 id, Channel memory channel, uint256 paid, bool cooperative) private {
        delete _channels[id];
        uint256 refunded = channel.deposit - paid;
        emit ChannelSettled(id, channel.sender, channel.receiver, paid, refunded, cooperative);
        if (paid > 0) token.safeTransfer(channel.receiver, paid);
        if (refunded > 0) token.safeTransfer(channel.sender, refunded);
    }
}
